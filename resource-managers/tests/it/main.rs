//! Integration tests of the resource managers, with real processes (a real ipykernel included).

mod ipykernel;
mod local;
mod ssh;
mod ssh_remote;
mod sshd;
mod support;
