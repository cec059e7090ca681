//! Integration tests of gateway-http (one test binary; topic files below).

mod api;
mod edge;
mod lifecycle;
mod manager;
mod support;
mod tenancy;
mod ws;
