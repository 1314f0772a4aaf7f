//! Placeholder: whole-stack tonic tests (being written).
