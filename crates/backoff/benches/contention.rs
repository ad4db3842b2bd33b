//! Contention simulation (being written).
fn main() {}
