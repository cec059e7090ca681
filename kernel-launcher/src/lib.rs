//! Kernelspecs, launch templating and environment for Jupyter kernels.
//!
//! CONTRACT SKELETON: the public surface below is what the other crates build against.

pub mod env;
pub mod error;
pub mod kernelspec;
pub mod ports;
pub mod template;

pub use error::Error;
pub use kernelspec::{Backend, InterruptMode, KernelSpec, KernelSpecs, SpecConfig};
pub use ports::PortRange;
