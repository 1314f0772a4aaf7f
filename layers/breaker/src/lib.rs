//! palisade-breaker: being written.
