//! Cross-crate integration test fixtures.

pub mod yarn;
