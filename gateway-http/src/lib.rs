//! The kernel manager and the Enterprise Gateway REST and WebSocket API.
//!
//! The principal types and how they compose:
//!
//! * [`GatewayConfig`] is the validated, immutable configuration (built by the binary).
//! * [`KernelManager`] owns every kernel: it starts them through the resource managers of a
//!   [`resource_managers::Registry`], tracks their state and shuts them down.
//! * [`api::router`] is the HTTP application over a manager: EG's REST routes, the kernel
//!   channels WebSocket, token and CORS handling, and EG's `{"reason","message"}` error bodies,
//!   produced in one place (`impl IntoResponse for Error`).
//! * [`serve`] runs that router on a bound listener, over TLS when [`GatewayConfig::tls`] is set
//!   ([`tls::server_config`] builds it from PEM files), until a shutdown future resolves.
//!
//! ```no_run
//! # async fn run(config: gateway_http::GatewayConfig) -> std::io::Result<()> {
//! use std::sync::Arc;
//!
//! let manager = gateway_http::KernelManager::new(Arc::new(config), resource_managers::Registry::new());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8888").await?;
//! gateway_http::serve(listener, manager, async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await
//! # }
//! ```

pub mod api;
pub mod auth;
mod budget;
pub mod config;
pub mod error;
mod io;
pub mod manager;
pub mod metrics;
pub mod profiles;
pub mod server;
pub mod store;
pub mod tls;
pub mod ws;
mod ws_out;

pub use api::router;
pub use auth::{Authenticators, Identity};
pub use config::GatewayConfig;
pub use error::{Error, Fault};
pub use manager::KernelManager;
pub use server::serve;
