//! The Jupyter messaging protocol (5.3/5.4) for any Rust program that talks to kernels.
//!
//! CONTRACT SKELETON: the public surface below is what the other crates build against.
//! Bodies are filled in by the jupyter-protocol work; signatures change only by agreement.

pub mod channel;
pub mod client;
pub mod connection;
pub mod content;
pub mod error;
pub mod header;
pub mod message;
pub mod sockets;
pub mod transport;
pub mod websocket;
pub mod wire;

pub use channel::Channel;
pub use client::KernelClient;
pub use connection::{ConnectionInfo, Transport};
pub use error::Error;
pub use header::Header;
pub use message::Message;
pub use sockets::{KernelSockets, SocketOptions};
pub use wire::{SignatureScheme, Signer, Verifier};
