//! The `docker` and `docker-swarm` backends: EG's `DockerProcessProxy` and
//! `DockerSwarmProcessProxy`, gateway_provisioners' `docker-provisioner` and
//! `docker-swarm-provisioner` (reference §7.6, §7.8, §8, §11).
//!
//! A kernel runs in a container ([`DockerMode::Container`]) or as a one-task swarm service
//! ([`DockerMode::Swarm`]) on the Docker engine at [`DockerConfig::host`] (a unix socket or a
//! plain `tcp://` port). The image's entry point is a kernel *launcher* (EG's images run
//! `bootstrap-kernel.sh`, which starts `launch_ipykernel.py`) that calls the gateway's [`kernel_launcher::ResponseListener`] back
//! with the kernel's connection info, as for every remote kernel.
//!
//! # Two ways to create the container
//! * **EG's way** (the default): the kernelspec's `argv` — gateway_provisioners'
//!   `launch_docker.py` — runs on the gateway, templated as for YARN, with the launch
//!   environment plus `DOCKER_HOST`, `[EG_|GP_]DOCKER_MODE`, `[EG_|GP_]DOCKER_NETWORK` and
//!   `[EG_|GP_]REMOVE_CONTAINER`; the script creates the container or service (it needs Python
//!   and the `docker` package on the gateway) and exits. The gateway then finds the workload
//!   by its `kernel_id` label.
//! * **Native**: with `"launch": "native"` in the kernelspec's `process_proxy.config`, the
//!   gateway creates the workload itself through the Engine API, with what `launch_docker.py`
//!   would have given it: the image, the launch environment (without `PATH`) plus
//!   `KERNEL_ID`, `RESPONSE_ADDRESS`, `PUBLIC_KEY`, `PORT_RANGE`,
//!   `KERNEL_SPARK_CONTEXT_INIT_MODE` and `KERNEL_CLASS_NAME` (from the argv's flags), the
//!   labels `kernel_id`, `component=kernel`, `app=enterprise-gateway`, `KERNEL_UID:KERNEL_GID`
//!   as the user, the network, and for swarm restart condition `none` and endpoint mode
//!   `dnsrr`. Client values travel as JSON strings in the request body, never as text of a
//!   command line. A missing image is pulled first (as docker-py does), within the deadline.
//!
//! # What is checked before anything is created
//! The image (`KERNEL_IMAGE` from the client, else the kernelspec's `image_name`, else
//! [`DockerConfig::image`]; none is EG's "No kernel image could be determined!") must be a
//! well-formed reference, and the name `<KERNEL_USERNAME>-<kernel_id>` a valid container name
//! (swarm: a service name of at most 63) — a client's bad value is [`Error::InvalidRequest`]
//! (400) naming the field. `KERNEL_UID` (default 1000) and `KERNEL_GID` (default 100) get EG's
//! checks and messages, refusals as [`Error::Unauthorized`] (403). `KERNEL_WORKING_DIR` is
//! dropped (EG's default), unless [`DockerConfig::mirror_working_dirs`]
//! (`EG_MIRROR_WORKING_DIRS`): then it must be an absolute path (else a 400) and becomes the
//! container's `WorkingDir` (a service's `ContainerSpec.Dir`), in the native path as
//! `launch_docker.py` does from its environment.
//!
//! # Launch
//! Every [`poll_interval`](crate::launcher::LauncherSettings::poll_interval) the workload's
//! state is read: a container `created` or `running` is alive, anything else (`exited`,
//! `dead`, `restarting`, `removing`, `paused`, or gone) fails the launch with EG's "Error starting kernel container; status: ..." and the
//! container's last output; a service's current task (the newest one desired running) in
//! `complete`, `failed`, `rejected`, `shutdown`, `orphaned` or `remove` fails it with the
//! task's error (e.g. the engine's "No such image"). A launcher that exits non-zero before a
//! workload exists fails it with the launcher's output (docker-py's traceback names the
//! engine's reason). The launch completes when the workload runs and the connection info has
//! arrived; the deadline gives EG's "Waited too long" reason. A failed launch kills the
//! launcher and removes every workload labelled with the kernel id.
//!
//! # Addresses
//! As EG: a container's address on [`DockerConfig::network`] (or its bridge address); a task's
//! first network-attachment address. Where EG's answer is empty — host networking — the
//! container shares its host's network, so the kernel is at the host's address: a task's node
//! address (`Status.Addr`), and for a plain container the engine's host
//! ([`DockerConfig::host_ip`]: this machine for a unix socket, the engine's address for a
//! `tcp://` one).
//!
//! # The kernel afterwards ([`DockerKernelProcess`])
//! Liveness is the engine's view (container state; the service's current task), so a kernel
//! whose container was removed or killed from outside is reported ended, never unknown.
//! Interrupts and other signals go through the launcher's communication port; SIGKILL through
//! the engine. `terminate` sends SIGTERM and `{"shutdown": 1}` through the port, waits up to the
//! grace period for the container or task to end, then kills it. Afterwards the container is
//! removed when [`DockerConfig::remove_container`] is set (`EG_REMOVE_CONTAINER`), a service
//! always (as EG). [`KernelRecord::process`] keeps the container or service `id`, so
//! [`ResourceManager::reattach`] needs no search.
//!
//! # The client
//! [`client::DockerClient`] is a thin typed client of the Engine API (version
//! [`client::API_VERSION`]) on hyper's HTTP/1.1 client connection over tokio's `UnixStream` or
//! `TcpStream`, already in the build. The `bollard` crate was measured as the alternative: it adds four
//! crates (`bollard`, `bollard-stubs`, `hyperlocal`, `serde_repr`) and about 30 s of compile
//! time on the 2-core CI machines (`bollard-stubs` alone 21 s, 26 MB of debug rlibs), for
//! generated models of the whole API when these backends use fifteen calls; and its default
//! API version (1.5x) must be negotiated down for Docker 20.10 (Debian 12's engine, API 1.41).
//!
//! [`Error::InvalidRequest`]: crate::Error::InvalidRequest
//! [`Error::Unauthorized`]: crate::Error::Unauthorized
//! [`KernelRecord::process`]: crate::KernelRecord::process
//! [`ResourceManager::reattach`]: crate::ResourceManager::reattach

pub mod backend;
pub mod client;
pub mod validate;

pub use backend::{
    DockerConfig, DockerKernelProcess, DockerMode, DockerResourceManager, NAME_DOCKER, NAME_SWARM,
};
pub use client::{DockerClient, DockerError, DockerHost};
