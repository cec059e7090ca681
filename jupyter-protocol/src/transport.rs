//! The socket layer behind a small trait, so an encrypted transport (CurveZMQ, JEP 145) can be added
//! later without touching callers. [`ZmqTransport`] implements it with the pure-Rust `zeromq` crate.
