//! Test helper: a worker process for the crash tests (not yet implemented).

fn main() {}
