//! palisade-chaos: being written.
