//! palisade-ratelimit: being written.
