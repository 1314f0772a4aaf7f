//! Placeholder: the whole-stack bench (being written).
fn main() {}
