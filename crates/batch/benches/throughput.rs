//! Throughput benchmarks (being written).

fn main() {}
