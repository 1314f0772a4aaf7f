//! Placeholder: the load benchmark server (being written).
fn main() {}
