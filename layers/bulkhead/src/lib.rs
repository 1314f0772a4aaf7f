//! palisade-bulkhead: being written.
