//! Integration tests of the launcher protocol: the response listener against payloads built by
//! EG's own code path (PyCryptodome), and the `kernel-launcher` agent with real kernels.

mod agent;
mod listener;
mod support;
