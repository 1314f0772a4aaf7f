//! Placeholder: the demo server as a process (being written).
