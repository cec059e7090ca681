//! The kernel manager and the Enterprise Gateway REST and WebSocket API.
//!
//! CONTRACT SKELETON: `config`, `error`, and the `manager` facade below are shared between the HTTP
//! layer (`api`, `server`, `tls`) and the kernel manager (`manager`, `ws`).

pub mod config;
pub mod error;
pub mod manager;

pub use config::GatewayConfig;
pub use error::{Error, Fault};
pub use manager::KernelManager;
