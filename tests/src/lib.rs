//! Cross-crate integration test fixtures.
