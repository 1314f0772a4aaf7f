//! palisade-idempotency: being written.
