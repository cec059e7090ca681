//! Port ranges and port allocation.
use crate::Error;

/// An inclusive port range; `0..0` means "any port the OS picks".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// Lower bound.
    pub lo: u16,
    /// Upper bound.
    pub hi: u16,
}

impl PortRange {
    /// Parses and validates `lo..hi` with EG's rules and messages (min size 1000, 1024..65535).
    pub fn parse(s: &str) -> Result<PortRange, Error> {
        todo!()
    }
    /// `lo..hi`.
    pub fn to_template(&self) -> String {
        todo!()
    }
    /// Allocates `n` distinct free TCP ports on `host`, inside the range when it is not `0..0`.
    pub fn allocate(&self, host: &str, n: usize) -> Result<Vec<u16>, Error> {
        todo!()
    }
}
