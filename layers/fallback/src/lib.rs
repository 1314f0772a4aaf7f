//! palisade-fallback: being written.
