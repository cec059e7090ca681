//! The Jupyter messaging protocol (5.3/5.4) for any Rust program that talks to kernels.
//!
//! # Overview
//!
//! * [`Message`] is a message with its four JSON parts (header, parent header, metadata,
//!   content) kept as raw bytes, plus binary buffers. Only the [`Header`] is ever parsed by a
//!   relay ([`Message::parse_header`]); content is forwarded byte for byte. The [`content`] module
//!   has typed contents for what a client needs (kernel_info, execute, status, stream, error,
//!   interrupt, shutdown).
//! * [`Signer`] turns a message into ZeroMQ wire frames (`<IDS|MSG>`, hex HMAC-SHA256 signature,
//!   the four parts, buffers); [`Verifier`] checks incoming frames in constant time and rejects
//!   replays. Both come from a kernel's [`ConnectionInfo`] (its connection file).
//! * [`transport`] hides the sockets behind [`transport::KernelTransport`];
//!   [`transport::ZmqTransport`] uses the pure-Rust `zeromq` crate.
//! * [`KernelSockets`] is one kernel incarnation's socket unit:
//!   [`sockets::SessionChannels`] (shell, control and stdin DEALERs sharing a session identity),
//!   [`sockets::IopubSubscription`] (a SUB drained by its own task into a bounded buffer) and
//!   [`sockets::Heartbeat`]. Every incoming message is verified; a subscription can hand large
//!   iopub messages on while their MAC is still being checked, with the [`Verdict`] to wait for
//!   before their end goes out ([`verdict`]). After a kernel restart the whole unit is dropped and
//!   connected anew.
//! * [`KernelClient`] builds on a socket unit to run `kernel_info`, `execute`, `interrupt`,
//!   `shutdown` and heartbeat checks.
//! * [`websocket`] converts between messages and Jupyter Server's WebSocket frames (legacy JSON,
//!   legacy binary, and `v1.kernel.websocket.jupyter.org`) as pure functions.
//!
//! A gateway therefore reads a client's WebSocket frame with [`websocket::legacy::decode_text`]
//! or [`websocket::v1::decode`], sends the message with [`sockets::ChannelSender::send`] (which
//! signs it), and forwards kernel messages from `replies` and `messages` with the matching
//! `encode` function.
//!
//! # Example
//!
//! Signing, verifying and re-framing a message for a WebSocket client, without any sockets:
//!
//! ```
//! use jupyter_protocol::websocket::{legacy, v1, WsFrame};
//! use jupyter_protocol::{Channel, Header, Message, SignatureScheme, Signer, Verifier};
//!
//! # fn main() -> Result<(), jupyter_protocol::Error> {
//! let header = Header::new("execute_request", "session-1", "alice");
//! let msg = Message::new(&header, &serde_json::json!({"code": "1 + 1"}));
//!
//! // To the kernel: signed wire frames, checked on the other side.
//! let signer = Signer::new(SignatureScheme::HmacSha256, b"secret-key");
//! let frames = signer.encode(&[], &msg);
//! let (_identities, received) = Verifier::new(signer).decode(frames, 1 << 20)?;
//! assert_eq!(received, msg);
//!
//! // To a browser: the same bytes in a legacy text frame or a v1 binary frame.
//! let WsFrame::Text(text) = legacy::encode(Channel::Iopub, &received)? else { unreachable!() };
//! assert_eq!(legacy::decode_text(&text)?, (Channel::Iopub, msg.clone()));
//! assert_eq!(v1::decode(&v1::encode(Channel::Shell, &msg))?, (Channel::Shell, msg));
//! # Ok(())
//! # }
//! ```
//!
//! Talking to a running kernel (see `examples/execute.rs` for a complete program):
//!
//! ```no_run
//! # async fn run() -> Result<(), jupyter_protocol::Error> {
//! use std::time::Duration;
//! use jupyter_protocol::{ConnectionInfo, KernelClient, SocketOptions};
//!
//! let info = ConnectionInfo::read("kernel-1234.json".as_ref())?;
//! let mut client = KernelClient::connect(&info, &SocketOptions::default()).await?;
//! let outcome = client.execute("print('hi')", Duration::from_secs(30)).await?;
//! assert_eq!(outcome.stdout, "hi\n");
//! # Ok(())
//! # }
//! ```

pub mod channel;
pub mod client;
pub mod connection;
pub mod content;
pub mod error;
pub mod header;
pub mod message;
pub mod sockets;
pub mod transport;
pub mod verdict;
pub mod websocket;
pub mod wire;

pub use channel::Channel;
pub use client::KernelClient;
pub use connection::{ConnectionInfo, Transport};
pub use error::Error;
pub use header::Header;
pub use message::{HeaderFields, Message};
pub use sockets::{KernelSockets, SocketOptions};
pub use verdict::{Forwarded, IopubItem, Verdict};
pub use wire::{SignatureScheme, Signer, Verifier};
