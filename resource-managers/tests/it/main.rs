//! Integration tests of the resource managers, with real processes (a real ipykernel included).

mod ipykernel;
mod local;
#[cfg(feature = "ssh")]
mod ssh;
#[cfg(feature = "ssh")]
mod ssh_remote;
#[cfg(feature = "ssh")]
mod sshd;
mod support;
