//! A tiny kernel for tests and benchmarks.
fn main() {}
