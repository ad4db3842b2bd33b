//! Burn-down benchmark (not yet implemented).

fn main() {}
