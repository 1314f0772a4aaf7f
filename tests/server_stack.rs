//! Placeholder: whole-stack server tests (being written).
