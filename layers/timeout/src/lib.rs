//! palisade-timeout: being written.
