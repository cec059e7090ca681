//! Cross-crate integration tests: the built `enterprise-gateway` binary driven by real clients.
//!
//! * [`active_active`] — two gateways on one PostgreSQL store behind HAProxy (round robin), a
//!   Jupyter Server client through it; one gateway killed, its kernels taken over.
//! * [`docker`] — the Docker and Swarm backends against a real engine started by the harness
//!   (its own socket and loopback TCP port, a kernel image built from a local directory, host
//!   networking); mirrored working directories and a profile's limits as the engine shows them.
//! * [`smoke`] — the binary alone: `GET /api` over a hand-written HTTP request, SIGTERM exit.
//! * [`jupyter_server`] — Jupyter Server's own gateway client (`--gateway-url`) in front of the
//!   gateway, driven through Jupyter Server's REST API and kernel WebSocket.
//! * [`exhaustion`] — the client memory budget: four kernels flooding four clients that do
//!   not read, the gateway's RSS sampled before, during and after, a fifth client served.
//! * [`eg_itests`] — Enterprise Gateway's own integration tests (from the 3.3.0 wheel),
//!   unchanged, pointed at the gateway.
//! * [`jupyterhub`] — JupyterHub API tokens checked against a real JupyterHub (users, groups,
//!   owners, revocation, an unreachable Hub).
//! * [`kubernetes`] — GP's Kubernetes kernelspec through the gateway binary against the
//!   API-server emulator: a bad `KERNEL_*` value is a 400, no room a 503, start and delete.
//! * [`oidc`] — bearer JWTs from a test-run OIDC issuer (discovery, JWKS, key rotation).
//! * [`operations`] — a real Prometheus scraping `/metrics`, the metrics port, `/readyz`, and
//!   the admin page in headless Chromium (screenshots under `target/test-artifacts/`).
//! * [`operator`] — what an EG operator meets first: the Helm chart's environment-only
//!   deployment, EG's Python config (read, converted, or refused), `--generate-config`, the
//!   one warning about unsupported settings, configuration errors, the access log.
//! * [`plugins`] — external resource-manager plugins: the Python example plugin runs ipykernel
//!   end to end (start, execute, interrupt, restart, shutdown, nothing left), and its hostile
//!   modes (crash, garbage, wrong id, silence) each fail a start clearly within the deadline;
//!   a plugin kernel re-attached after a `kill -9` of its gateway.
//! * [`profiles`] — kernel profiles through Jupyter Server's gateway client (`KERNEL_PROFILE`
//!   in its environment): allowed, unknown (400), forbidden (403); a SIGHUP reload.
//! * [`persistence`] — kernels that outlive the gateway: a SQLite kernel store, `kill -9` of the
//!   gateway, re-attach on restart, a Jupyter Server client reading its state back.
//! * [`store_docker`] — Docker kernels (EG's `launch_docker.py` path and the native one, the
//!   engine over a plain TCP `DOCKER_HOST`) re-attached after a `kill -9` of their gateway:
//!   same containers, state kept, DELETE removes them.
//! * [`store_postgres`] — the PostgreSQL kernel store (Debian's PostgreSQL, started by
//!   [`postgres`]): kernels survive a crash; while the database is down starts answer 503 and
//!   running kernels keep working; the gateway reconnects by itself.
//! * [`store_ssh`] — an SSH kernel (a real sshd on 127.0.0.2, GP's launcher) re-attached after a
//!   `kill -9` of its gateway, state kept.
//! * [`store_yarn`] — a YARN kernel (the RM emulator, GP's launcher as the AM) re-attached after
//!   a `kill -9` of its gateway: same application, state kept.
//! * [`token_file`] — per-user tokens: `enterprise-gateway token add|list|revoke` and the
//!   gateway's token-file authenticator (file-change detection, SIGHUP).
//!
//! Tests named `e2e_*` start real processes and are limited to two at a time by the nextest
//! `kernels` test group (`.config/nextest.toml`). They need `cargo xtask setup` (the venvs) and
//! `cargo build --workspace --bins` (the binaries); `cargo xtask ci` does both. Set
//! `GATEWAY_UNDER_TEST=eg` to run them against Enterprise Gateway 3.3.0 instead of ours.

mod active_active;
mod agent_eg;
mod docker;
mod eg_itests;
mod exhaustion;
mod jupyter_server;
mod jupyterhub;
mod kubernetes;
mod oidc;
mod operations;
mod operator;
mod persistence;
mod plugins;
mod postgres;
mod profiles;
mod smoke;
mod spark_languages;
mod store_docker;
mod store_postgres;
mod store_ssh;
mod store_yarn;
mod support;
mod token_file;
mod two_users;
