//! palisade-degrade: being written.
