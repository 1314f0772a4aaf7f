//! Placeholder: the demo server (being written).
fn main() {}
