//! The kernel manager and the Enterprise Gateway REST and WebSocket API.
