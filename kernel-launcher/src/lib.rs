//! Kernelspecs, launch templating and environment for Jupyter kernels.
//!
//! This crate holds the backend-independent half of starting a kernel, the parts Enterprise
//! Gateway does before a process proxy runs anything:
//!
//! * [`KernelSpecs::discover`] scans a search path (built by [`kernelspec::search_path`]) for
//!   kernelspec directories and loads each [`KernelSpec`]: its `argv` template, `env` stanza,
//!   [`InterruptMode`], the [`BackendRef`] its metadata names (EG's
//!   `process_proxy.class_name` or gateway_provisioners' `kernel_provisioner.provisioner_name`), and its per-kernelspec [`SpecConfig`].
//! * [`env::filter_request_env`] validates the `env` object of a start request against an
//!   [`env::EnvPolicy`]; [`env::compose`] then builds the exact environment the kernel gets.
//! * [`PortRange`] parses EG's `lo..hi` ranges and allocates free ports inside them.
//! * [`template::substitute`] fills `{connection_file}`, `{kernel_id}`, ... into the `argv`
//!   template, item by item: the result is an argument vector, never a shell string.
//!
//! A resource manager (crate `resource-managers`) takes the spec, the composed env and the ports
//! and runs the kernel somewhere.
//!
//! For kernels started by a *launcher* on another host (EG's remote process proxies, reference
//! §8), the crate also holds the gateway side of the launcher protocol:
//!
//! * [`ResponseListener`] — the one callback listener of the gateway. It owns the gateway's RSA
//!   [`payload::KeyPair`]; a backend [`registers`](ResponseListener::register) a kernel id, puts
//!   the listener's `response_address` and `public_key_b64` into the launcher's `argv`, and
//!   awaits the [`PendingLaunch`], which yields the decrypted [`LauncherResponse`].
//! * [`payload`] — EG's payload format (version 1, and the legacy version 0), both directions.
//! * [`CommPort`] — the launcher's communication port: liveness probes, signals, shutdown.
//! * [`net`] — "is this host the gateway's own machine?".
//!
//! The `kernel-launcher` binary of this package is a launcher agent for any kernel: started on
//! the kernel's host with EG's (or gateway_provisioners') launcher arguments, then `--` and the
//! kernel's own `argv`, it does the launcher's half of the protocol with these same modules.
//!
//! ```
//! use kernel_launcher::{payload, ListenerOptions, ResponseListener};
//! use tokio::io::AsyncWriteExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let listener = ResponseListener::bind("127.0.0.1:0".parse()?, ListenerOptions::default()).await?;
//! let kernel_id = "0f3c7a52-6f1e-4c3e-9a49-1d5b1c0f7d11";
//! let pending = listener.register(kernel_id)?;
//!
//! // What a launcher does with `{response_address}` and `{public_key}`:
//! let info = serde_json::json!({"ip": "0.0.0.0", "shell_port": 1, "iopub_port": 2,
//!     "stdin_port": 3, "control_port": 4, "hb_port": 5, "key": "k", "pid": 42,
//!     "pgid": 42, "comm_port": 6, "kernel_id": kernel_id});
//! let wire = payload::encrypt_v1(listener.public_key_b64(), info.to_string().as_bytes())?;
//! let mut socket = tokio::net::TcpStream::connect(listener.response_address()).await?;
//! socket.write_all(&wire).await?;
//! socket.shutdown().await?;
//!
//! let response = pending.await?;
//! assert_eq!((response.pid, response.comm_port), (Some(42), Some(6)));
//! # Ok(())
//! # }
//! ```
//!
//! # Example
//!
//! ```
//! use std::collections::BTreeMap;
//! use kernel_launcher::{env, template, BackendRef, KernelSpecs, PortRange};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let kernels = tempfile::tempdir()?;
//! std::fs::create_dir(kernels.path().join("Python3"))?;
//! std::fs::write(
//!     kernels.path().join("Python3/kernel.json"),
//!     r#"{"argv": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
//!         "display_name": "Python 3", "language": "python"}"#,
//! )?;
//!
//! let specs = KernelSpecs::discover(&[kernels.path().to_path_buf()]);
//! let spec = specs.get("python3").ok_or("python3 not found")?;
//! assert_eq!(spec.backend, BackendRef::Default);
//!
//! // The client's env: KERNEL_* variables pass, others need the policy's allow-list.
//! let policy = env::EnvPolicy::default();
//! let request = serde_json::json!({"KERNEL_USERNAME": "alice", "SECRET": "dropped"});
//! let request = env::filter_request_env(request.as_object().ok_or("object")?, &policy)?;
//! let gateway_env = BTreeMap::new();
//! let kernel_env = env::compose(&env::EnvInputs {
//!     request: Some(&request),
//!     gateway: &gateway_env,
//!     policy: &policy,
//!     spec,
//!     kernel_id: "0f3c7a52-6f1e-4c3e-9a49-1d5b1c0f7d11",
//!     username: "alice",
//!     impersonation_enabled: false,
//! });
//! assert_eq!(kernel_env["KERNEL_LANGUAGE"], "python");
//! assert!(!kernel_env.contains_key("SECRET"));
//!
//! let ports = PortRange::parse("0..0")?.allocate("127.0.0.1", 5)?;
//! assert_eq!(ports.len(), 5);
//!
//! let vars = BTreeMap::from([("connection_file", "/tmp/kernel-1.json".to_owned())]);
//! let argv = template::substitute(&spec.argv, &vars);
//! assert_eq!(argv.last().map(String::as_str), Some("/tmp/kernel-1.json"));
//! # Ok(())
//! # }
//! ```

pub mod comm;
pub mod env;
pub mod error;
pub mod kernelspec;
pub mod net;
pub mod payload;
pub mod ports;
pub mod response;
pub mod template;

pub use comm::{CommOutcome, CommPort, CommRequest};
pub use error::Error;
pub use kernelspec::{BackendRef, InterruptMode, KernelSpec, KernelSpecs, SpecConfig};
pub use payload::LauncherResponse;
pub use ports::{PortAllocator, PortLease, PortRange};
pub use response::{ListenerOptions, PendingLaunch, ResponseListener};
