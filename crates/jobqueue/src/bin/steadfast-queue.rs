//! Admin command line for steadfast-jobqueue (not yet implemented).

fn main() {}
