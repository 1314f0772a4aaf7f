//! Placeholder: the tonic client example (being written).
fn main() {}
