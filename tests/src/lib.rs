//! Cross-crate integration test fixtures.

pub mod kubernetes;
pub mod yarn;
