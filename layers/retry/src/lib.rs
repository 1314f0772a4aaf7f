//! palisade-retry: being written.
