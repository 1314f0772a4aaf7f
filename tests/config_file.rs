//! Placeholder: config file tests (being written).
