//! What a workload runs against: our gateway, Enterprise Gateway 3.3.0, or the direct floor (the
//! kernel process launched by the benchmark itself and driven with
//! [`jupyter_protocol::KernelClient`]). A [`Session`] is one started kernel with a client
//! attached, whichever the target.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use jupyter_protocol::content::{ExecuteRequest, KernelInfoRequest};
use jupyter_protocol::{Channel, ConnectionInfo, KernelClient, Message, SocketOptions};
use tokio::time::Instant;

use super::client::{self, WsClient, WsProtocol};
use super::kubernetes::{self, K8sAccess};
use super::proc;
use super::ssh::{self, SshAccess};
use super::yarn::YarnAccess;
use test_support::proc::Proc;

/// The line both gateways print once they listen.
const READY_LINE: &str = "is available at http";

/// How long a gateway may take to come up.
const GATEWAY_START_TIMEOUT: Duration = Duration::from_secs(90);

/// How long a kernel may take from launch to its first kernel_info_reply.
pub(crate) const KERNEL_READY_TIMEOUT: Duration = Duration::from_secs(120);

/// After an execute_reply, how long to wait for the request's idle status (a gateway that drops
/// iopub messages may never deliver it).
const IDLE_GRACE: Duration = Duration::from_secs(3);

/// The kernelspec our gateways keep a warm pool for.
pub(crate) const POOLED_SPEC: &str = "bench_python_pool";
/// The YARN kernelspec our gateways keep a warm pool for while the RM emulator runs.
pub(crate) const POOLED_YARN_SPEC: &str = "bench_python_yarn_pool";
/// Kernels in each pool.
pub(crate) const POOL_SIZE: usize = 2;

/// Which system is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum TargetKind {
    /// The kernel driven directly with our own `KernelClient` (no gateway): the floor.
    Direct,
    /// Our gateway (release build).
    Ours,
    /// Our gateway with `--metrics_enabled=false` (`--metrics-off`): what metrics cost.
    OursNoMetrics,
    /// Enterprise Gateway 3.3.0 from `.venv-eg`.
    Eg,
    /// Two of our gateways on one PostgreSQL kernel store behind HAProxy (`--balanced`).
    Balanced,
}

impl TargetKind {
    pub(crate) fn key(self) -> &'static str {
        match self {
            TargetKind::Direct => "direct",
            TargetKind::Ours => "ours",
            TargetKind::OursNoMetrics => "ours-no-metrics",
            TargetKind::Eg => "eg",
            TargetKind::Balanced => "balanced",
        }
    }

    pub(crate) fn label(self) -> &'static str {
        match self {
            TargetKind::Direct => "direct floor",
            TargetKind::Ours => "ours",
            TargetKind::OursNoMetrics => "ours, metrics off",
            TargetKind::Eg => "EG 3.3.0",
            TargetKind::Balanced => "2 gateways + HAProxy",
        }
    }
}

/// A kernelspec the benchmark writes (identical for every target).
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    /// Kernelspec name.
    pub(crate) name: &'static str,
    /// argv with `{connection_file}` (or the launcher placeholders).
    pub(crate) argv: Vec<String>,
    /// kernel.json `metadata` (which process proxy runs it).
    pub(crate) metadata: serde_json::Value,
}

/// Where everything is, and the kernelspecs every target shares.
#[derive(Debug)]
pub(crate) struct Env {
    /// Workspace root.
    pub(crate) root: PathBuf,
    /// Our gateway binary.
    pub(crate) gateway_bin: PathBuf,
    /// EG's entry point in `.venv-eg`.
    pub(crate) eg_entry: PathBuf,
    /// The ipykernel kernelspec (the test venv's interpreter, by absolute path, so EG's
    /// jupyter_client does not swap in its own `sys.executable`).
    pub(crate) python: Spec,
    /// The same ipykernel under another name, for which our gateways keep a warm pool of
    /// [`POOL_SIZE`] kernels (`--profiles_file`); Enterprise Gateway starts it cold.
    pub(crate) pooled_python: Spec,
    /// The test kernel's kernelspec.
    pub(crate) test_kernel: Spec,
    /// Ports for kernels the direct floor starts.
    pub(crate) ports: kernel_launcher::PortAllocator,
    /// ipykernel started through the remote-launcher protocol on this host: EG's
    /// `DistributedProcessProxy` metadata (both gateways read it, and both launch locally for
    /// `localhost`) with gateway_provisioners' `launch_ipykernel.py`, which calls back with
    /// encrypted connection info.
    pub(crate) launcher: Spec,
    /// The launcher kernelspec placed on the SSH host [`ssh::HOST`] (`config.remote_hosts`): the
    /// same argv (the host is this machine, so the script's path is valid there).
    pub(crate) ssh_launcher: Spec,
    /// The launcher as a YARN application master: this crate's stand-in `spark-submit` in
    /// cluster mode (application name and tag = the kernel id, `waitAppCompletion=false`) with
    /// EG's `YarnClusterProcessProxy` metadata; `env.HADOOP_CONF_DIR` = [`Env::hadoop_conf_dir`].
    pub(crate) yarn_launcher: Spec,
    /// The same as a pooled kernelspec ([`POOLED_YARN_SPEC`]).
    pub(crate) pooled_yarn: Spec,
    /// Where the `yarn-site.xml` naming the RM emulator goes once it runs.
    pub(crate) hadoop_conf_dir: PathBuf,
    /// How gateways reach the RM emulator, while it runs (only when YARN workloads were
    /// selected); every gateway started meanwhile gets it ([`YarnAccess::gateway_env`]).
    pub(crate) yarn: Option<YarnAccess>,
    /// The launcher in a pod through the Kubernetes emulator, with EG's `KubernetesProcessProxy`
    /// metadata ([`kubernetes::spec`]).
    pub(crate) kubernetes_launcher: Spec,
    /// How gateways reach the Kubernetes emulator, while it runs (only when Kubernetes workloads
    /// were selected); every gateway started meanwhile runs in-cluster for it
    /// ([`K8sAccess::in_cluster`]).
    pub(crate) kubernetes: Option<K8sAccess>,
    /// How gateways reach the SSH host, while it runs (only when SSH workloads were selected);
    /// gateways for the SSH workloads are started with it ([`Gateway::start`]'s `ssh`), the others
    /// without (ours would otherwise reach `localhost` over SSH as well).
    pub(crate) ssh: Option<SshAccess>,
    /// WebSocket framing of every client.
    pub(crate) ws: WsProtocol,
    /// `RLIMIT_NOFILE` given to each gateway.
    pub(crate) gateway_nofile: u64,
    /// A program (with its arguments) our gateway is run under, e.g. valgrind; empty for none.
    pub(crate) gateway_wrapper: Vec<String>,
    /// Temp dir: kernelspecs (`kernels/`), connection files, logs.
    pub(crate) dir: tempfile::TempDir,
}

impl Env {
    /// Writes the benchmark's kernelspecs under a fresh temp dir.
    pub(crate) fn new(
        root: &Path,
        bin_dir: &Path,
        ws: WsProtocol,
        gateway_nofile: u64,
    ) -> Result<Env> {
        let dir = tempfile::Builder::new()
            .prefix("gateway-bench-")
            .tempdir()
            .context("creating the benchmark's temp dir")?;
        let python_bin = root.join(".venv/bin/python");
        let test_kernel_bin = bin_dir.join("test-kernel");
        let python = Spec {
            name: "bench_python",
            argv: vec![
                python_bin.to_string_lossy().into_owned(),
                "-m".into(),
                "ipykernel_launcher".into(),
                "-f".into(),
                "{connection_file}".into(),
            ],
            metadata: serde_json::json!({}),
        };
        let pooled_python = Spec {
            name: POOLED_SPEC,
            argv: python.argv.clone(),
            metadata: serde_json::json!({}),
        };
        let test_kernel = Spec {
            name: "bench_test_kernel",
            argv: vec![
                test_kernel_bin.to_string_lossy().into_owned(),
                "-f".into(),
                "{connection_file}".into(),
            ],
            metadata: serde_json::json!({}),
        };
        let launcher = Spec {
            name: "bench_python_launcher",
            argv: vec![
                python_bin.to_string_lossy().into_owned(),
                gp_launcher_script(root, dir.path())?
                    .to_string_lossy()
                    .into_owned(),
                "--kernel-id".into(),
                "{kernel_id}".into(),
                "--port-range".into(),
                "{port_range}".into(),
                "--response-address".into(),
                "{response_address}".into(),
                "--public-key".into(),
                "{public_key}".into(),
                "--kernel-class-name".into(),
                "ipykernel.ipkernel.IPythonKernel".into(),
            ],
            metadata: serde_json::json!({"process_proxy": {"class_name":
                "enterprise_gateway.services.processproxies.distributed.DistributedProcessProxy"}}),
        };
        let ssh_launcher = Spec {
            name: "bench_python_ssh",
            argv: launcher.argv.clone(),
            // A comma-separated string: EG splits it (a JSON list would break EG; we take both).
            metadata: serde_json::json!({"process_proxy": {
                "class_name":
                    "enterprise_gateway.services.processproxies.distributed.DistributedProcessProxy",
                "config": {"remote_hosts": ssh::HOST},
            }}),
        };
        let tmp = dir.path().join("tmp");
        let hadoop_conf_dir = dir.path().join("hadoop-conf");
        let mut yarn_argv = vec![bin_dir.join("spark-submit").to_string_lossy().into_owned()];
        yarn_argv.extend(
            tests::yarn::CLUSTER_SUBMIT_ARGS
                .iter()
                .map(|a| (*a).to_owned()),
        );
        for (key, value) in [("PYSPARK_PYTHON", &python_bin), ("TMPDIR", &tmp)] {
            yarn_argv.push("--conf".into());
            yarn_argv.push(format!(
                "spark.yarn.appMasterEnv.{key}={}",
                value.to_string_lossy()
            ));
        }
        // The launcher script and its arguments (the AM runs it with PYSPARK_PYTHON).
        yarn_argv.extend(launcher.argv.iter().skip(1).cloned());
        yarn_argv.extend(["--spark-context-initialization-mode".into(), "none".into()]);
        let yarn_launcher = Spec {
            name: "bench_python_yarn",
            argv: yarn_argv,
            metadata: serde_json::json!({"process_proxy": {"class_name":
                "enterprise_gateway.services.processproxies.yarn.YarnClusterProcessProxy"}}),
        };
        let pooled_yarn = Spec {
            name: POOLED_YARN_SPEC,
            argv: yarn_launcher.argv.clone(),
            metadata: yarn_launcher.metadata.clone(),
        };
        // gateway_provisioners' launcher leaves its connection file in the temp dir when the
        // kernel is stopped by a signal: keep those in the benchmark's own.
        let launcher_env = serde_json::json!({"TMPDIR": tmp});
        let kubernetes_launcher = kubernetes::spec(root, dir.path());
        let yarn_env = serde_json::json!({"TMPDIR": tmp, "HADOOP_CONF_DIR": hadoop_conf_dir});
        let no_env = serde_json::json!({});
        for (spec, language, kernel_env) in [
            (&python, "python", &no_env),
            (&pooled_python, "python", &no_env),
            (&test_kernel, "test", &no_env),
            (&launcher, "python", &launcher_env),
            (&ssh_launcher, "python", &launcher_env),
            (&yarn_launcher, "python", &yarn_env),
            (&pooled_yarn, "python", &yarn_env),
            (&kubernetes_launcher, "python", &launcher_env),
        ] {
            let spec_dir = dir.path().join("kernels").join(spec.name);
            std::fs::create_dir_all(&spec_dir)?;
            let json = serde_json::json!({
                "argv": spec.argv,
                "display_name": spec.name,
                "language": language,
                "metadata": spec.metadata,
                "env": kernel_env,
            });
            std::fs::write(spec_dir.join("kernel.json"), json.to_string())?;
        }
        for sub in ["logs", "logs/kernels", "connections", "tmp"] {
            std::fs::create_dir_all(dir.path().join(sub))?;
        }
        Ok(Env {
            root: root.to_path_buf(),
            gateway_bin: bin_dir.join("enterprise-gateway"),
            eg_entry: root.join(".venv-eg/bin/jupyter-enterprisegateway"),
            python,
            pooled_python,
            test_kernel,
            launcher,
            ssh_launcher,
            yarn_launcher,
            pooled_yarn,
            hadoop_conf_dir,
            yarn: None,
            kubernetes_launcher,
            kubernetes: None,
            ssh: None,
            ports: kernel_launcher::PortAllocator::for_this_host(),
            ws,
            gateway_nofile,
            gateway_wrapper: Vec::new(),
            dir,
        })
    }

    /// Checks that what the given targets need exists.
    pub(crate) fn check(&self, targets: &[TargetKind]) -> Result<()> {
        let mut need: Vec<(&Path, &str)> = vec![
            (Path::new(&self.python.argv[0]), "run `cargo xtask setup`"),
            (
                Path::new(&self.test_kernel.argv[0]),
                "build it: cargo build --release -p tests --bins",
            ),
        ];
        if targets.contains(&TargetKind::Ours) || targets.contains(&TargetKind::OursNoMetrics) {
            need.push((
                &self.gateway_bin,
                "build it: cargo build --release -p gateway-bin",
            ));
        }
        if targets.contains(&TargetKind::Eg) {
            need.push((&self.eg_entry, "run `cargo xtask setup` (creates .venv-eg)"));
        }
        for (path, hint) in need {
            if !path.exists() {
                bail!("{} is missing; {hint}", path.display());
            }
        }
        Ok(())
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join("logs").join(name)
    }
}

// ---------------------------------------------------------------------------------------------
// Gateways
// ---------------------------------------------------------------------------------------------

/// A running gateway (ours or EG), stopped with its kernels when dropped.
#[derive(Debug)]
pub(crate) struct Gateway {
    pub(crate) kind: TargetKind,
    pub(crate) port: u16,
    /// RSS right after start-up and one `GET /api/kernelspecs`, in KiB.
    pub(crate) idle_rss_kib: u64,
    /// Whether it was started with the SSH host's settings.
    pub(crate) ssh: bool,
    guard: Option<Proc>,
    /// For the balanced target: the second gateway, HAProxy and PostgreSQL, stopped with it.
    peers: Vec<Gateway>,
    helpers: Vec<Proc>,
    /// For the balanced target: the store's URL.
    store: Option<String>,
    _dir: tempfile::TempDir,
}

impl Gateway {
    /// Starts a gateway with the benchmark's kernelspecs and waits until it serves; with `ssh`,
    /// also with the settings that reach the SSH host ([`Env::ssh`], which must be running).
    pub(crate) async fn start(env: &Env, kind: TargetKind, ssh: bool) -> Result<Gateway> {
        let mut last = None;
        // A just-picked free port may be taken in the meantime: retry with new ports.
        for _ in 0..3 {
            let started = if kind == TargetKind::Balanced {
                Gateway::start_balanced(env, ssh).await
            } else {
                Gateway::start_once(env, kind, ssh, &[]).await
            };
            match started {
                Ok(gw) => return Ok(gw),
                Err(err) => {
                    let text = format!("{err:#}");
                    let clash = text.contains("in use") || text.contains("no available port");
                    if !clash {
                        return Err(err);
                    }
                    last = Some(err);
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("the gateway did not start")))
    }

    /// Two gateways of ours on a fresh PostgreSQL store, HAProxy in front; the target's port is
    /// HAProxy's, its process (for CPU and memory) the first gateway.
    async fn start_balanced(env: &Env, ssh: bool) -> Result<Gateway> {
        let dir = tempfile::Builder::new()
            .prefix("balanced-")
            .tempdir_in(env.dir.path())?;
        let pg_dir = dir.path().to_path_buf();
        let pg = tokio::task::spawn_blocking(move || super::balanced::Postgres::start(&pg_dir))
            .await??;
        let args = |id: &str| {
            vec![
                format!("--store={}", pg.url),
                format!("--gateway_id={id}"),
                "--lease_ttl=3".to_owned(),
            ]
        };
        let mut first = Gateway::start_once(env, TargetKind::Ours, ssh, &args("bench-a")).await?;
        let second = Gateway::start_once(env, TargetKind::Ours, ssh, &args("bench-b")).await?;
        let (haproxy, port) =
            super::balanced::haproxy(dir.path(), &[first.port, second.port]).await?;
        let (status, _) = client::http(port, "GET", "/api/kernelspecs", None).await?;
        if status != 200 {
            bail!("GET /api/kernelspecs through HAProxy answered {status}");
        }
        Ok(Gateway {
            kind: TargetKind::Balanced,
            port,
            idle_rss_kib: first.idle_rss_kib,
            ssh,
            guard: first.guard.take(),
            peers: vec![second, first],
            helpers: vec![haproxy, pg.guard],
            store: Some(pg.url.clone()),
            _dir: dir,
        })
    }

    async fn start_once(
        env: &Env,
        kind: TargetKind,
        ssh: bool,
        extra_args: &[String],
    ) -> Result<Gateway> {
        let dir = tempfile::Builder::new()
            .prefix("gateway-")
            .tempdir_in(env.dir.path())?;
        let port = proc::free_port()?;
        let response_port = proc::free_port()?;
        let mut cmd = match kind {
            TargetKind::Ours | TargetKind::OursNoMetrics => {
                let mut cmd = match env.gateway_wrapper.split_first() {
                    Some((program, args)) => {
                        let mut cmd = proc::with_nofile(Path::new(program), env.gateway_nofile);
                        cmd.args(args).arg(&env.gateway_bin);
                        cmd
                    }
                    None => proc::with_nofile(&env.gateway_bin, env.gateway_nofile),
                };
                cmd.args(["--ip", "127.0.0.1", "--port", &port.to_string()])
                    .arg("--port_retries=0");
                if kind == TargetKind::OursNoMetrics {
                    cmd.arg("--metrics_enabled=false");
                }
                // Warm pools: the local one always, the YARN one while the RM emulator runs.
                let mut pools = vec![POOLED_SPEC];
                if env.yarn.is_some() {
                    pools.push(POOLED_YARN_SPEC);
                }
                let profiles = dir.path().join("profiles.toml");
                let text: String = pools
                    .iter()
                    .map(|spec| format!("[[pools]]\nkernelspec = \"{spec}\"\nsize = {POOL_SIZE}\n"))
                    .collect();
                std::fs::write(&profiles, text)?;
                cmd.arg(format!("--profiles_file={}", profiles.display()));
                cmd.args(extra_args);
                cmd
            }
            TargetKind::Eg => {
                let mut cmd = proc::with_nofile(&env.eg_entry, env.gateway_nofile);
                cmd.arg("--ip=127.0.0.1")
                    .arg(format!("--port={port}"))
                    .arg("--port_retries=0");
                cmd
            }
            TargetKind::Direct => bail!("the direct floor is not a gateway"),
            TargetKind::Balanced => bail!("the balanced target starts through start_balanced"),
        };
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            // RUST_BACKTRACE would make a failing kernel's log end in a backtrace, not its error.
            if k.starts_with("EG_")
                || k.starts_with("KG_")
                || k.starts_with("JUPYTER_")
                || k.starts_with("RUST_BACKTRACE")
                || k == "RUST_LIB_BACKTRACE"
                // A session of the benchmark's own would hide whether kernels ran over SSH.
                || k.starts_with("SSH_")
                // The YARN kernelspec names its cluster itself (spark-submit would prefer these).
                || k.starts_with("HADOOP_")
                || k.starts_with("YARN_")
                || k.starts_with("SPARK_")
            {
                cmd.env_remove(&key);
            }
        }
        for sub in ["config", "data", "runtime"] {
            std::fs::create_dir_all(dir.path().join(sub))?;
        }
        let mut path = OsString::from(env.root.join(".venv/bin"));
        path.push(":");
        path.push(std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin")));
        cmd.current_dir(dir.path())
            .env("JUPYTER_PATH", env.dir.path())
            .env("PATH", path)
            .env("JUPYTER_CONFIG_DIR", dir.path().join("config"))
            .env("JUPYTER_DATA_DIR", dir.path().join("data"))
            .env("JUPYTER_RUNTIME_DIR", dir.path().join("runtime"))
            .env("EG_LIST_KERNELS", "True")
            .env("EG_UNAUTHORIZED_USERS", "nobody")
            .env("EG_RESPONSE_IP", "127.0.0.1")
            .env("EG_RESPONSE_PORT", response_port.to_string())
            .env("EG_RESPONSE_PORT_RETRIES", "0")
            // Remote launchers' logs (EG's default is /tmp).
            .env("EG_KERNEL_LOG_DIR", env.log_path("kernels"))
            .env("PYTHONUNBUFFERED", "1");
        if ssh {
            let access = env.ssh.as_ref().context("the SSH host is not running")?;
            cmd.envs(access.gateway_env());
        }
        if let Some(yarn) = &env.yarn {
            cmd.envs(yarn.gateway_env());
        }
        if let Some(k8s) = &env.kubernetes {
            cmd.envs(k8s.gateway_env());
            cmd = k8s.in_cluster(&cmd, dir.path())?;
        }
        let log = env.log_path(&format!("{}-{port}.log", kind.key()));
        let name = kind.label().to_owned();
        let guard = tokio::task::spawn_blocking(move || {
            proc::spawn(
                &name,
                cmd,
                Some(&log),
                Some(READY_LINE),
                GATEWAY_START_TIMEOUT,
            )
        })
        .await??;
        let mut gateway = Gateway {
            kind,
            port,
            idle_rss_kib: 0,
            ssh,
            guard: Some(guard),
            peers: Vec::new(),
            helpers: Vec::new(),
            store: None,
            _dir: dir,
        };
        let (status, _) = client::http(port, "GET", "/api/kernelspecs", None).await?;
        if status != 200 {
            bail!("GET /api/kernelspecs answered {status}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        gateway.idle_rss_kib = proc::rss_kib(gateway.pid()).unwrap_or(0);
        Ok(gateway)
    }

    /// For the balanced target: the second gateway's (`bench-b`) port and process id, and the
    /// store's URL (the first gateway is the target's own process, which must keep running).
    pub(crate) fn balanced_parts(&self) -> Option<(u16, i32, String)> {
        let second = self.peers.first()?;
        Some((second.port, second.pid(), self.store.clone()?))
    }

    /// The gateway's process id (for EG, the Python interpreter's).
    pub(crate) fn pid(&self) -> i32 {
        self.guard.as_ref().map_or(0, Proc::pid)
    }

    /// Whether the gateway process is still running.
    pub(crate) fn is_running(&mut self) -> bool {
        self.guard.as_mut().is_some_and(|g| !g.has_exited())
    }

    /// The end of the gateway's log.
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        self.guard
            .as_ref()
            .map(|g| g.log_tail(lines))
            .unwrap_or_default()
    }

    /// Stops the gateway (SIGTERM, then SIGKILL for it and every kernel it launched).
    pub(crate) async fn stop(mut self) {
        if let Some(mut guard) = self.guard.take() {
            let _ = tokio::task::spawn_blocking(move || {
                guard.stop(Duration::from_secs(10));
            })
            .await;
        }
        for peer in std::mem::take(&mut self.peers) {
            Box::pin(peer.stop()).await;
        }
        // HAProxy, then PostgreSQL once no gateway needs it.
        for mut helper in std::mem::take(&mut self.helpers) {
            let _ = tokio::task::spawn_blocking(move || helper.stop(Duration::from_secs(10))).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------------------------

/// A kernel the benchmark launched itself, with our own client on its sockets.
#[derive(Debug)]
pub(crate) struct DirectKernel {
    guard: Proc,
    client: KernelClient,
    connection_file: PathBuf,
    /// The kernel's ports, reserved while it runs (as the gateway's local backend does), so
    /// concurrent direct starts never pick the same port.
    _ports: kernel_launcher::PortLease,
}

/// Launches `spec` the way a local gateway would (connection file with free ports and a fresh
/// key, argv with `{connection_file}` substituted), connects a [`KernelClient`] and waits for the
/// first kernel_info_reply.
async fn start_direct(env: &Env, spec: &Spec) -> Result<DirectKernel> {
    // A port picked for the kernel can be taken by someone else before the kernel binds it;
    // the kernel then exits at once. Notice that and start again on fresh ports.
    let mut last = None;
    for _ in 0..3 {
        match start_direct_once(env, spec).await? {
            Ok(kernel) => return Ok(kernel),
            Err(exited) => last = Some(exited),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("the kernel did not start")))
}

/// One attempt: `Ok(Err(_))` when the kernel process exited before answering.
async fn start_direct_once(env: &Env, spec: &Spec) -> Result<Result<DirectKernel>> {
    let lease = env
        .ports
        .allocate(kernel_launcher::PortRange::ANY, "127.0.0.1", 5)
        .context("allocating the kernel's ports")?;
    let ports = lease.ports().to_vec();
    let info = ConnectionInfo {
        transport: jupyter_protocol::Transport::Tcp,
        ip: "127.0.0.1".to_owned(),
        shell_port: ports[0],
        iopub_port: ports[1],
        stdin_port: ports[2],
        control_port: ports[3],
        hb_port: ports[4],
        key: uuid::Uuid::new_v4().to_string(),
        signature_scheme: "hmac-sha256".to_owned(),
        kernel_name: spec.name.to_owned(),
    };
    let connection_file = env
        .dir
        .path()
        .join("connections")
        .join(format!("kernel-{}.json", uuid::Uuid::new_v4()));
    info.write(&connection_file)?;
    let file = connection_file.to_string_lossy().into_owned();
    let argv: Vec<String> = spec
        .argv
        .iter()
        .map(|a| a.replace("{connection_file}", &file))
        .collect();
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    cmd.env("PATH", {
        let mut path = OsString::from(env.root.join(".venv/bin"));
        path.push(":");
        path.push(std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin")));
        path
    });
    let mut guard = proc::spawn(spec.name, cmd, None, None, Duration::ZERO)?;
    let opts = SocketOptions {
        connect_timeout: KERNEL_READY_TIMEOUT,
        ..SocketOptions::default()
    };
    let ready = async {
        let mut client = KernelClient::connect(&info, &opts).await?;
        client.kernel_info(KERNEL_READY_TIMEOUT).await?;
        anyhow::Ok(client)
    };
    let exited = async {
        while !guard.has_exited() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let client = tokio::select! {
        client = ready => client?,
        () = exited => {
            let _ = std::fs::remove_file(&connection_file);
            return Ok(Err(anyhow::anyhow!(
                "the kernel exited before answering kernel_info (ports {ports:?})"
            )));
        }
    };
    Ok(Ok(DirectKernel {
        guard,
        client,
        connection_file,
        _ports: lease,
    }))
}

/// One started kernel with a client attached.
#[derive(Debug)]
pub(crate) enum Session {
    /// Through a gateway's REST API and WebSocket.
    Gateway {
        port: u16,
        kernel_id: String,
        ws: Box<WsClient>,
    },
    /// The direct floor.
    Direct(Box<DirectKernel>),
}

/// How an execute ended.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Executed {
    /// Whether the request's idle status arrived (a gateway may have dropped it).
    pub(crate) idle_seen: bool,
}

/// Starts a kernel on `gateway` (or directly when `None`) and waits until it answers
/// kernel_info: for a gateway `POST /api/kernels`, the WebSocket handshake, and a
/// kernel_info request over the WebSocket.
pub(crate) async fn start_session(
    env: &Env,
    gateway: Option<&Gateway>,
    spec: &Spec,
) -> Result<Session> {
    let Some(gateway) = gateway else {
        return Ok(Session::Direct(Box::new(start_direct(env, spec).await?)));
    };
    let port = gateway.port;
    // As Jupyter Server's gateway client does, the start names its user in `env` (a pool serves
    // only starts whose environment its kernels were started with, but for the user).
    let kernel_id = if spec.name == POOLED_SPEC || spec.name == POOLED_YARN_SPEC {
        client::start_kernel_as(port, spec.name, "bench").await?
    } else {
        client::start_kernel(port, spec.name).await?
    };
    let connected = async {
        let mut ws = WsClient::connect(port, &kernel_id, env.ws).await?;
        ws.shell_round_trip(
            "kernel_info_request",
            &KernelInfoRequest {},
            KERNEL_READY_TIMEOUT,
        )
        .await?;
        anyhow::Ok(ws)
    }
    .await;
    match connected {
        Ok(ws) => Ok(Session::Gateway {
            port,
            kernel_id,
            ws: Box::new(ws),
        }),
        Err(err) => {
            let _ = client::delete_kernel(port, &kernel_id).await;
            Err(err)
        }
    }
}

impl Session {
    /// The gateway's id of the kernel (`None` for the direct floor).
    pub(crate) fn kernel_id(&self) -> Option<&str> {
        match self {
            Session::Gateway { kernel_id, .. } => Some(kernel_id),
            Session::Direct(_) => None,
        }
    }

    /// Runs `code`; `observe` sees every iopub message of the request (its msg_type, the message,
    /// and when it arrived). Returns once the execute_reply and the idle status have arrived (or
    /// [`IDLE_GRACE`] after the reply when the idle status never comes).
    pub(crate) async fn execute(
        &mut self,
        code: &str,
        timeout: Duration,
        observe: &mut (dyn FnMut(&str, &Message, Instant) + Send),
    ) -> Result<Executed> {
        match self {
            Session::Direct(kernel) => {
                kernel
                    .client
                    .execute_with(code, timeout, |msg| {
                        let at = Instant::now();
                        if let Ok(header) = msg.parse_header() {
                            observe(&header.msg_type, msg, at);
                        }
                    })
                    .await?;
                Ok(Executed { idle_seen: true })
            }
            Session::Gateway { ws, .. } => {
                let mut deadline = Instant::now() + timeout;
                let (msg_id, msg) = ws.request("execute_request", &ExecuteRequest::new(code));
                ws.send(Channel::Shell, &msg).await?;
                let mut replied = false;
                let mut idle = false;
                while !(replied && idle) {
                    let Some(seen) = ws.recv_until(deadline).await? else {
                        if replied {
                            return Ok(Executed { idle_seen: false });
                        }
                        bail!("no execute_reply within {timeout:?}");
                    };
                    if seen.parent.as_deref() != Some(msg_id.as_str()) {
                        continue;
                    }
                    match seen.channel {
                        Channel::Shell if seen.msg_type == "execute_reply" => {
                            replied = true;
                            deadline = deadline.min(Instant::now() + IDLE_GRACE);
                        }
                        Channel::Iopub => {
                            if seen.msg_type == "status" && is_idle(&seen.msg) {
                                idle = true;
                            }
                            observe(&seen.msg_type, &seen.msg, seen.at);
                        }
                        _ => {}
                    }
                }
                Ok(Executed { idle_seen: true })
            }
        }
    }

    /// Shuts the kernel down and releases everything (DELETE for a gateway kernel; shutdown
    /// request and process-group kill for a direct one).
    pub(crate) async fn close(self) -> Result<()> {
        match self {
            Session::Gateway {
                port,
                kernel_id,
                ws,
            } => {
                (*ws).close().await;
                client::delete_kernel(port, &kernel_id).await
            }
            Session::Direct(kernel) => {
                let DirectKernel {
                    mut guard,
                    mut client,
                    connection_file,
                    _ports,
                } = *kernel;
                let _ = client.shutdown(false, Duration::from_secs(2)).await;
                drop(client);
                let _ =
                    tokio::task::spawn_blocking(move || guard.stop(Duration::from_secs(3))).await;
                let _ = std::fs::remove_file(connection_file);
                drop(_ports);
                Ok(())
            }
        }
    }
}

/// Whether a status message says idle.
pub(crate) fn is_idle(msg: &Message) -> bool {
    #[derive(serde::Deserialize)]
    struct State<'a> {
        #[serde(borrow)]
        execution_state: std::borrow::Cow<'a, str>,
    }
    serde_json::from_slice::<State<'_>>(&msg.content).is_ok_and(|s| s.execution_state == "idle")
}

/// gateway_provisioners' assembled `launch_ipykernel.py` (with its `server_listener.py`), made by
/// its own `jupyter-ssh-spec install` into the benchmark's temp dir.
fn gp_launcher_script(root: &Path, dir: &Path) -> Result<PathBuf> {
    let prefix = dir.join("gp");
    let status = Command::new(root.join(".venv/bin/jupyter-ssh-spec"))
        .args(["install", "--kernel-name", "gp_launcher", "--prefix"])
        .arg(&prefix)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .context("running jupyter-ssh-spec (gateway-provisioners in .venv; `cargo xtask setup`)")?;
    if !status.success() {
        bail!("jupyter-ssh-spec install failed with {status}");
    }
    let script = prefix.join("share/jupyter/kernels/gp_launcher/scripts/launch_ipykernel.py");
    if !script.exists() {
        bail!("{} was not generated", script.display());
    }
    Ok(script)
}
