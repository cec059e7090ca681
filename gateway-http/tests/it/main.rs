//! Integration tests of gateway-http (one test binary; topic files below).

mod api;
mod edge;
mod exhaustion;
mod lifecycle;
mod manager;
mod operations;
mod profiles;
mod support;
mod tenancy;
mod ws;
