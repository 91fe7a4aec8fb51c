//! criterion bench: backbone (placeholder until written).
fn main() {}
