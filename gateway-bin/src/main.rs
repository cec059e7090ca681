//! The enterprise-gateway binary.
fn main() {}
