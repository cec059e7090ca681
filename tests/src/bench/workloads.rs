//! The workloads, each a named function of a target. Every workload returns a list of metrics;
//! the same workload runs against the direct floor, our gateway and EG in turn.
//!
//! To add a row (kernel start or execute on another backend), add a [`Backend`] variant naming its
//! kernelspec: [`Kind::Start`] and [`Kind::Execute`] are parameterised by it.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use futures_util::StreamExt as _;
use jupyter_protocol::Channel;
use jupyter_protocol::content::{ExecuteRequest, KernelInfoRequest, Stream};
use tokio::time::Instant;

use super::client::{self, WsClient};
use super::kubernetes;
use super::proc;
use super::ssh;
use super::stats;
use super::target::{self, Env, Gateway, Session, Spec};
use super::yarn;

/// One measured number.
#[derive(Debug, Clone)]
pub(crate) struct Metric {
    pub(crate) name: &'static str,
    pub(crate) unit: &'static str,
    pub(crate) value: f64,
}

fn metric(name: &'static str, unit: &'static str, value: f64) -> Metric {
    Metric { name, unit, value }
}

/// Where a started kernel runs; each variant names the kernelspec that selects it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    /// A local process (ipykernel from the test venv).
    Local,
    /// ipykernel through the remote-launcher protocol on this host (encrypted callback,
    /// communication port); the floor is the same kernel started directly.
    Launcher,
    /// The same launcher started over SSH on [`ssh::HOST`] (a real sshd on this machine): both
    /// gateways open an SSH session per launch. The floor is the kernel started directly.
    Ssh,
    /// The launcher as the application master of a YARN application, submitted by the stand-in
    /// `spark-submit` to the RM emulator ([`yarn`]). The floor is the kernel started directly.
    Yarn,
    /// The local ipykernel from our gateway's warm pool (EG, which has none, starts it cold;
    /// the floor is the kernel started directly).
    Pool,
    /// The YARN kernel of [`Backend::Yarn`] from our gateway's warm pool (EG starts it cold).
    YarnPool,
    /// The launcher in a pod: GP's `launch_kubernetes.py` creates it through the Kubernetes
    /// API-server emulator ([`kubernetes`]), whose kubelet runs it here. The floor is the kernel
    /// started directly.
    Kubernetes,
}

impl Backend {
    fn key(self) -> &'static str {
        match self {
            Backend::Local => "local",
            Backend::Launcher => "launcher",
            Backend::Ssh => "ssh",
            Backend::Yarn => "yarn",
            Backend::Pool => "pool",
            Backend::YarnPool => "yarn_pool",
            Backend::Kubernetes => "kubernetes",
        }
    }

    fn spec(self, env: &Env) -> &Spec {
        match self {
            Backend::Local => &env.python,
            Backend::Launcher => &env.launcher,
            Backend::Ssh => &env.ssh_launcher,
            Backend::Yarn => &env.yarn_launcher,
            Backend::Pool => &env.pooled_python,
            Backend::YarnPool => &env.pooled_yarn,
            Backend::Kubernetes => &env.kubernetes_launcher,
        }
    }

    /// What the direct floor starts: a launcher needs a gateway to call back to, so its floor
    /// is the kernel itself.
    fn floor_spec(self, env: &Env) -> &Spec {
        match self {
            Backend::Local
            | Backend::Launcher
            | Backend::Ssh
            | Backend::Yarn
            | Backend::Pool
            | Backend::YarnPool
            | Backend::Kubernetes => &env.python,
        }
    }
}

/// Sizes of the workloads (`--quick` shrinks them).
#[derive(Debug, Clone)]
pub(crate) struct Sizes {
    pub(crate) execute_count: usize,
    pub(crate) execute_warmup: usize,
    pub(crate) iopub_messages: usize,
    pub(crate) display_bytes: usize,
    pub(crate) memory_kernels: usize,
    pub(crate) scale_seconds: f64,
    pub(crate) scale_rate: f64,
    /// How many kernel starts or WebSocket connects the bulk phases run at once.
    pub(crate) bulk_parallelism: usize,
}

/// What a workload does.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Kind {
    /// Kernel start until the first kernel_info_reply.
    Start(Backend),
    /// `pass` round trips on a kernel started through the backend.
    Execute(Backend),
    /// One request printing many flushed lines.
    Iopub,
    /// One large display_data.
    Display,
    /// Starting `n` kernels at once.
    Concurrent(usize),
    /// Gateway RSS idle and with many idle kernels.
    Memory,
    /// `n` test kernels, each with its own client at a fixed request rate.
    Scale(usize),
    /// `--balanced` only: kernels started on one gateway, that gateway killed with SIGKILL, until
    /// the other supervises all of them (the store shows its lease on every one).
    Takeover,
}

/// A named workload and the targets it runs against.
#[derive(Debug, Clone)]
pub(crate) struct Workload {
    /// Stable id (JSON key, goal lookup).
    pub(crate) id: String,
    /// What it measures, for the table.
    pub(crate) title: String,
    pub(crate) kind: Kind,
}

impl Workload {
    /// The list for one run.
    pub(crate) fn all(sizes: &Sizes, concurrent: &[usize], scale: &[usize]) -> Vec<Workload> {
        let mut list = vec![
            Workload {
                id: format!("start_{}", Backend::Local.key()),
                title: "kernel start → kernel_info_reply (local ipykernel)".to_owned(),
                kind: Kind::Start(Backend::Local),
            },
            Workload {
                id: format!("start_{}", Backend::Pool.key()),
                title: format!(
                    "kernel start → kernel_info_reply from a warm pool of {} (local ipykernel; \
                     EG starts it cold)",
                    target::POOL_SIZE
                ),
                kind: Kind::Start(Backend::Pool),
            },
            Workload {
                id: format!("start_{}", Backend::Launcher.key()),
                title: "kernel start → kernel_info_reply (ipykernel via the launcher on localhost)"
                    .to_owned(),
                kind: Kind::Start(Backend::Launcher),
            },
            Workload {
                id: format!("start_{}", Backend::Ssh.key()),
                title: format!(
                    "kernel start → kernel_info_reply (ipykernel via the launcher over SSH to {})",
                    ssh::HOST
                ),
                kind: Kind::Start(Backend::Ssh),
            },
            Workload {
                id: format!("start_{}", Backend::Yarn.key()),
                title: "kernel start → kernel_info_reply (ipykernel as a YARN application: \
                        spark-submit stand-in, RM emulator)"
                    .to_owned(),
                kind: Kind::Start(Backend::Yarn),
            },
            Workload {
                id: format!("start_{}", Backend::YarnPool.key()),
                title: format!(
                    "kernel start → kernel_info_reply from a warm pool of {} YARN kernels \
                     (EG starts it cold)",
                    target::POOL_SIZE
                ),
                kind: Kind::Start(Backend::YarnPool),
            },
            Workload {
                id: format!("start_{}", Backend::Kubernetes.key()),
                title: "kernel start → kernel_info_reply (ipykernel in a pod: GP's \
                        launch_kubernetes.py, API-server emulator)"
                    .to_owned(),
                kind: Kind::Start(Backend::Kubernetes),
            },
            Workload {
                id: "execute_pass".to_owned(),
                title: format!(
                    "execute `pass` round trip ({} requests)",
                    sizes.execute_count
                ),
                kind: Kind::Execute(Backend::Local),
            },
            Workload {
                id: format!("execute_{}", Backend::Ssh.key()),
                title: format!(
                    "execute `pass` round trip, kernel launched over SSH ({} requests)",
                    sizes.execute_count
                ),
                kind: Kind::Execute(Backend::Ssh),
            },
            Workload {
                id: "iopub_burst".to_owned(),
                title: format!(
                    "iopub burst: {} flushed print()s, one stream message each",
                    sizes.iopub_messages
                ),
                kind: Kind::Iopub,
            },
            Workload {
                id: "display_data".to_owned(),
                title: format!("one {} MB display_data", sizes.display_bytes as f64 / 1e6),
                kind: Kind::Display,
            },
        ];
        for &n in concurrent {
            list.push(Workload {
                id: format!("concurrent_starts_{n}"),
                title: format!("{n} concurrent kernel starts, until all are ready"),
                kind: Kind::Concurrent(n),
            });
        }
        list.push(Workload {
            id: "memory".to_owned(),
            title: format!(
                "gateway RSS: idle, and per idle kernel with {} test kernels up",
                sizes.memory_kernels
            ),
            kind: Kind::Memory,
        });
        list.push(Workload {
            id: "takeover".to_owned(),
            title: "a gateway killed: until the other supervises its 3 kernels (lease_ttl 3 s)"
                .to_owned(),
            kind: Kind::Takeover,
        });
        for &n in scale {
            list.push(Workload {
                id: format!("scale_{n}"),
                title: format!(
                    "{n} test kernels × {} req/s each for {} s (execute `echo x`)",
                    sizes.scale_rate, sizes.scale_seconds
                ),
                kind: Kind::Scale(n),
            });
        }
        list
    }

    /// Whether the workload launches kernels over SSH (the run then starts the SSH host).
    pub(crate) fn needs_ssh(&self) -> bool {
        matches!(
            self.kind,
            Kind::Start(Backend::Ssh) | Kind::Execute(Backend::Ssh)
        )
    }

    /// Whether the workload launches kernels through YARN (the run then starts the RM emulator).
    pub(crate) fn needs_yarn(&self) -> bool {
        matches!(
            self.kind,
            Kind::Start(Backend::Yarn | Backend::YarnPool) | Kind::Execute(Backend::Yarn)
        )
    }

    /// Whether the workload launches kernels as pods (the run then starts the API-server
    /// emulator).
    pub(crate) fn needs_kubernetes(&self) -> bool {
        matches!(self.kind, Kind::Start(Backend::Kubernetes))
    }

    /// Whether the workload has a direct-floor variant.
    pub(crate) fn has_floor(&self) -> bool {
        !matches!(self.kind, Kind::Memory | Kind::Scale(_) | Kind::Takeover)
    }

    /// Whether each run gets a freshly started gateway of its own.
    pub(crate) fn fresh_gateway(&self) -> bool {
        matches!(self.kind, Kind::Scale(_) | Kind::Takeover)
    }

    /// An upper bound on the run time, after which the run counts as failed.
    pub(crate) fn time_limit(&self, sizes: &Sizes) -> Duration {
        match self.kind {
            Kind::Concurrent(n) => Duration::from_secs(120 + 10 * n as u64),
            Kind::Memory => Duration::from_secs(120 + 2 * sizes.memory_kernels as u64),
            Kind::Scale(n) => Duration::from_secs_f64(sizes.scale_seconds + 180.0 + 0.5 * n as f64),
            _ => Duration::from_secs(300),
        }
    }

    /// Runs the workload once against `gateway` (or the direct floor when `None`).
    pub(crate) async fn run(
        &self,
        env: &Env,
        sizes: &Sizes,
        gateway: Option<&Gateway>,
    ) -> Result<Vec<Metric>> {
        match self.kind {
            Kind::Start(backend) => start(env, gateway, backend).await,
            Kind::Execute(backend) => execute(env, sizes, gateway, backend).await,
            Kind::Iopub => iopub(env, sizes, gateway).await,
            Kind::Display => display(env, sizes, gateway).await,
            Kind::Concurrent(n) => concurrent(env, gateway, n).await,
            Kind::Memory => memory(env, sizes, gateway.context("memory needs a gateway")?).await,
            Kind::Scale(n) => scale(env, sizes, gateway.context("scale needs a gateway")?, n).await,
            Kind::Takeover => takeover(env, gateway.context("takeover needs a gateway")?).await,
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

// ---------------------------------------------------------------------------------------------
// 1. start
// ---------------------------------------------------------------------------------------------

/// The kernelspec a workload on `backend` starts: the backend's own through a gateway, the floor's
/// directly.
fn spec_for<'a>(env: &'a Env, gateway: Option<&Gateway>, backend: Backend) -> &'a Spec {
    match gateway {
        Some(_) => backend.spec(env),
        None => backend.floor_spec(env),
    }
}

async fn start(env: &Env, gateway: Option<&Gateway>, backend: Backend) -> Result<Vec<Metric>> {
    let pool_hits = match (backend, gateway) {
        (Backend::Pool | Backend::YarnPool, Some(gw)) => {
            pool_ready(gw, spec_for(env, gateway, backend).name).await?
        }
        _ => None,
    };
    let t0 = Instant::now();
    let mut session = target::start_session(env, gateway, spec_for(env, gateway, backend)).await?;
    let ready = t0.elapsed();
    if let (Some(before), Some(gw)) = (pool_hits, gateway)
        && pool_metric(
            gw.port,
            spec_for(env, gateway, backend).name,
            "eg_pool_starts_total",
            "outcome=\"hit\"",
        )
        .await?
            <= before
    {
        bail!("the start was not served from the warm pool");
    }
    let checked = check_backend(env, &mut session, backend).await;
    close_checked(env, session, backend).await?;
    checked?;
    Ok(vec![metric("ready", "ms", ms(ready))])
}

/// For our gateway: waits until its warm pool is full again and returns its hit count so far;
/// `None` for a gateway without our metrics (EG, or ours with metrics off), which starts cold.
async fn pool_ready(gateway: &Gateway, spec: &str) -> Result<Option<f64>> {
    let (status, _) = client::http(gateway.port, "GET", "/metrics", None).await?;
    if status != 200 {
        return Ok(None);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let full = target::POOL_SIZE as f64;
    while pool_metric(gateway.port, spec, "eg_pool_kernels", "").await? < full {
        if Instant::now() > deadline {
            bail!("the warm pool did not refill within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(Some(
        pool_metric(
            gateway.port,
            spec,
            "eg_pool_starts_total",
            "outcome=\"hit\"",
        )
        .await?,
    ))
}

/// The value of `family` for kernelspec `spec` (and `label` when not empty) in `/metrics`; 0 when
/// absent.
async fn pool_metric(port: u16, spec: &str, family: &str, label: &str) -> Result<f64> {
    let (_, body) = client::http(port, "GET", "/metrics", None).await?;
    let text = String::from_utf8_lossy(&body);
    let spec = format!("type=\"{spec}\"");
    Ok(text
        .lines()
        .filter(|l| l.starts_with(family) && l[family.len()..].starts_with('{'))
        .filter(|l| l.contains(&spec) && (label.is_empty() || l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// Checks, for a gateway's kernel, that it runs where the backend says (so neither gateway
/// quietly launched it locally). SSH: the kernel's `SSH_CONNECTION` must name the SSH host.
/// YARN: the RM must list one RUNNING application named after the kernel, and the kernel must
/// run in one of its containers (the NodeManager's `CONTAINER_ID`). Kubernetes: one Running pod
/// carries the kernel's labels, and the kernel's `HOSTNAME` is that pod's name.
async fn check_backend(env: &Env, session: &mut Session, backend: Backend) -> Result<()> {
    let Some(kernel_id) = session.kernel_id().map(str::to_owned) else {
        return Ok(());
    };
    match backend {
        Backend::Local | Backend::Launcher | Backend::Pool => Ok(()),
        Backend::Ssh => {
            let access = env.ssh.as_ref().context("the SSH host is not running")?;
            let printed = kernel_env_var(session, "SSH_CONNECTION").await?;
            ssh::check_ssh_connection(&printed, access)
        }
        Backend::Yarn | Backend::YarnPool => {
            let access = env
                .yarn
                .as_ref()
                .context("the YARN emulator is not running")?;
            let app_id = yarn::check_app_running(access, &kernel_id).await?;
            let printed = kernel_env_var(session, "CONTAINER_ID").await?;
            yarn::check_container(&printed, &app_id)
        }
        Backend::Kubernetes => {
            let access = env
                .kubernetes
                .as_ref()
                .context("the Kubernetes emulator is not running")?;
            let printed = kernel_env_var(session, "HOSTNAME").await?;
            kubernetes::check_pod_running(access, &kernel_id, &printed).await
        }
    }
}

/// Asks the kernel for one of its environment variables (empty when unset).
async fn kernel_env_var(session: &mut Session, name: &str) -> Result<String> {
    let mut printed = String::new();
    session
        .execute(
            &format!("import os; print(os.environ.get('{name}', ''), flush=True)"),
            Duration::from_secs(30),
            &mut |msg_type, msg, _| {
                if msg_type == "stream"
                    && let Ok(stream) = msg.parse_content::<Stream>()
                {
                    printed.push_str(&stream.text);
                }
            },
        )
        .await?;
    Ok(printed)
}

/// Closes the session; for an SSH, YARN or Kubernetes kernel behind a gateway, also waits until
/// no process of the kernel is left (it is not the gateway's descendant, so nothing else would
/// notice), for YARN until its application has ended, and for Kubernetes until its pod is gone.
async fn close_checked(env: &Env, session: Session, backend: Backend) -> Result<()> {
    let kernel_id = session.kernel_id().map(str::to_owned);
    session.close().await?;
    let Some(id) = kernel_id else {
        return Ok(());
    };
    match backend {
        Backend::Local | Backend::Launcher | Backend::Pool => Ok(()),
        Backend::Ssh => proc::await_kernel_gone(&id).await,
        Backend::Yarn | Backend::YarnPool => {
            let access = env
                .yarn
                .as_ref()
                .context("the YARN emulator is not running")?;
            yarn::await_kernel_gone(access, &id).await
        }
        Backend::Kubernetes => {
            let access = env
                .kubernetes
                .as_ref()
                .context("the Kubernetes emulator is not running")?;
            kubernetes::await_kernel_gone(access, &id).await
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 2. execute round trip
// ---------------------------------------------------------------------------------------------

async fn execute(
    env: &Env,
    sizes: &Sizes,
    gateway: Option<&Gateway>,
    backend: Backend,
) -> Result<Vec<Metric>> {
    let mut session = target::start_session(env, gateway, spec_for(env, gateway, backend)).await?;
    let result = async {
        check_backend(env, &mut session, backend).await?;
        let timeout = Duration::from_secs(30);
        for _ in 0..sizes.execute_warmup {
            session.execute("pass", timeout, &mut |_, _, _| {}).await?;
        }
        let mut samples = Vec::with_capacity(sizes.execute_count);
        let mut idle_missing = 0usize;
        for _ in 0..sizes.execute_count {
            let t0 = Instant::now();
            let done = session.execute("pass", timeout, &mut |_, _, _| {}).await?;
            samples.push(ms(t0.elapsed()));
            if !done.idle_seen {
                idle_missing += 1;
            }
        }
        if idle_missing > 0 {
            bail!("{idle_missing} executes never got their idle status");
        }
        let summary = stats::Summary::of(&samples);
        Ok(vec![
            metric("median", "ms", summary.median),
            metric("p99", "ms", stats::percentile(&samples, 99.0)),
        ])
    }
    .await;
    close_checked(env, session, backend).await?;
    result
}

// ---------------------------------------------------------------------------------------------
// 3. iopub burst
// ---------------------------------------------------------------------------------------------

async fn iopub(env: &Env, sizes: &Sizes, gateway: Option<&Gateway>) -> Result<Vec<Metric>> {
    let mut session = target::start_session(env, gateway, &env.python).await?;
    let n = sizes.iopub_messages;
    let result = async {
        // Warm the kernel's output path first.
        session
            .execute("print('warm', flush=True)", Duration::from_secs(30), &mut |_, _, _| {})
            .await?;
        // One write and one flush per line, so every line is its own stream message (a
        // background flush can never split a line).
        let code = format!(
            "import sys\nfor i in range({n}):\n    sys.stdout.write(f'{{i}}\\n'); sys.stdout.flush()\n"
        );
        let mut text = String::new();
        let mut messages = 0usize;
        let mut bad_messages = 0usize;
        let mut last = None;
        let t0 = Instant::now();
        session
            .execute(&code, Duration::from_secs(300), &mut |msg_type, msg, at| {
                if msg_type != "stream" {
                    return;
                }
                messages += 1;
                last = Some(at);
                match msg.parse_content::<Stream>() {
                    Ok(stream) => text.push_str(&stream.text),
                    Err(_) => bad_messages += 1,
                }
            })
            .await?;
        let Some(last) = last else {
            bail!("no stream message arrived");
        };
        let mut seen = vec![false; n];
        let mut bad_lines = 0usize;
        for line in text.lines() {
            match line.trim().parse::<usize>().ok().and_then(|i| seen.get_mut(i)) {
                Some(slot) => *slot = true,
                None => bad_lines += 1,
            }
        }
        if bad_lines + bad_messages > 0 {
            bail!("{bad_messages} unreadable stream messages, {bad_lines} lines that were not the numbers printed");
        }
        let received = seen.iter().filter(|&&s| s).count();
        let elapsed = (last - t0).as_secs_f64().max(1e-9);
        Ok(vec![
            metric("msgs/s", "msg/s", messages as f64 / elapsed),
            metric("received", "fraction", received as f64 / n.max(1) as f64),
            metric("messages", "count", messages as f64),
        ])
    }
    .await;
    session.close().await?;
    result
}

// ---------------------------------------------------------------------------------------------
// 4. one large display_data
// ---------------------------------------------------------------------------------------------

async fn display(env: &Env, sizes: &Sizes, gateway: Option<&Gateway>) -> Result<Vec<Metric>> {
    let mut session = target::start_session(env, gateway, &env.python).await?;
    let n = sizes.display_bytes;
    let result = async {
        // Import IPython.display before the clock starts.
        session
            .execute(
                "from IPython.display import display",
                Duration::from_secs(30),
                &mut |_, _, _| {},
            )
            .await?;
        let code = format!("display({{'text/plain': 'x' * {n}}}, raw=True)");
        let mut got: Option<(usize, Instant)> = None;
        // The gateway's resident memory, sampled every 2 ms while the message passes: its growth
        // over the value before is what holding the message costs (one copy is 1× the size).
        let pid = gateway.map(Gateway::pid).filter(|&pid| pid > 0);
        let before = pid.and_then(proc::rss_kib);
        let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let sampler = pid.map(|pid| {
            let sampling = std::sync::Arc::clone(&sampling);
            tokio::spawn(async move {
                let mut peak = 0;
                while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                    peak = peak.max(proc::rss_kib(pid).unwrap_or(0));
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                peak
            })
        });
        let t0 = Instant::now();
        let executed = session
            .execute(&code, Duration::from_secs(300), &mut |msg_type, msg, at| {
                if msg_type == "display_data" {
                    got = Some((msg.content.len(), at));
                }
            })
            .await;
        sampling.store(false, std::sync::atomic::Ordering::Relaxed);
        let peak = match sampler {
            Some(task) => Some(task.await?),
            None => None,
        };
        executed?;
        let Some((size, at)) = got else {
            bail!("the display_data never arrived");
        };
        if size < n {
            bail!("the display_data arrived with {size} bytes of content, expected ≥ {n}");
        }
        let secs = (at - t0).as_secs_f64().max(1e-9);
        let mut metrics = vec![metric("throughput", "MB/s", n as f64 / 1e6 / secs)];
        if let (Some(before), Some(peak)) = (before, peak) {
            let growth = peak.saturating_sub(before) as f64 * 1024.0;
            metrics.push(metric(
                "gateway RSS growth",
                "× message",
                growth / n.max(1) as f64,
            ));
        }
        Ok(metrics)
    }
    .await;
    session.close().await?;
    result
}

// ---------------------------------------------------------------------------------------------
// 5. concurrent starts
// ---------------------------------------------------------------------------------------------

async fn concurrent(env: &Env, gateway: Option<&Gateway>, n: usize) -> Result<Vec<Metric>> {
    let t0 = Instant::now();
    let starts = (0..n).map(|_| async {
        let session = target::start_session(env, gateway, &env.python).await;
        (session, t0.elapsed())
    });
    let results = futures_util::future::join_all(starts).await;
    let all_ready = t0.elapsed();
    let mut failures = Vec::new();
    let mut sessions = Vec::new();
    let mut each = Vec::new();
    for (result, at) in results {
        match result {
            Ok(session) => {
                sessions.push(session);
                each.push(ms(at));
            }
            Err(err) => failures.push(format!("{err:#}")),
        }
    }
    let closes = sessions.into_iter().map(Session::close);
    for closed in futures_util::future::join_all(closes).await {
        closed?;
    }
    if let Some(first) = failures.first() {
        bail!("{} of {n} starts failed; first: {first}", failures.len());
    }
    Ok(vec![
        metric("all ready", "ms", ms(all_ready)),
        metric("median start", "ms", stats::Summary::of(&each).median),
    ])
}

// ---------------------------------------------------------------------------------------------
// 6. gateway memory
// ---------------------------------------------------------------------------------------------

/// Starts `n` kernels of `spec` through the REST API, `parallel` at a time.
async fn start_many(
    gateway: &Gateway,
    spec: &Spec,
    n: usize,
    parallel: usize,
) -> Vec<Result<String>> {
    futures_util::stream::iter(0..n)
        .map(|_| client::start_kernel(gateway.port, spec.name))
        .buffer_unordered(parallel.max(1))
        .collect()
        .await
}

/// Deletes kernels, `parallel` at a time; returns how many deletes failed.
async fn delete_many(gateway: &Gateway, ids: &[String], parallel: usize) -> usize {
    let results: Vec<Result<()>> = futures_util::stream::iter(ids)
        .map(|id| client::delete_kernel(gateway.port, id))
        .buffer_unordered(parallel.max(1))
        .collect()
        .await;
    results.iter().filter(|r| r.is_err()).count()
}

async fn memory(env: &Env, sizes: &Sizes, gateway: &Gateway) -> Result<Vec<Metric>> {
    let pid = gateway.pid();
    let n = sizes.memory_kernels;
    let rss = || proc::rss_kib(pid).unwrap_or(0) as f64;
    let before = rss();
    let started = start_many(gateway, &env.test_kernel, n, sizes.bulk_parallelism).await;
    let (ids, errors): (Vec<_>, Vec<_>) = started.into_iter().partition(Result::is_ok);
    let ids: Vec<String> = ids.into_iter().filter_map(Result::ok).collect();
    let result = async {
        if let Some(Err(err)) = errors.into_iter().next() {
            bail!("starting {n} kernels failed: {err:#}");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let with_kernels = rss();
        // Then one WebSocket client on each.
        let connects: Vec<Result<WsClient>> = futures_util::stream::iter(&ids)
            .map(|id| async move {
                let mut ws = WsClient::connect(gateway.port, id, env.ws).await?;
                ws.shell_round_trip(
                    "kernel_info_request",
                    &KernelInfoRequest {},
                    target::KERNEL_READY_TIMEOUT,
                )
                .await?;
                Ok(ws)
            })
            .buffer_unordered(sizes.bulk_parallelism.max(1))
            .collect()
            .await;
        let mut clients = Vec::new();
        let mut connect_errors = Vec::new();
        for c in connects {
            match c {
                Ok(ws) => clients.push(ws),
                Err(err) => connect_errors.push(err),
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let with_clients = rss();
        futures_util::future::join_all(clients.into_iter().map(WsClient::close)).await;
        if let Some(err) = connect_errors.into_iter().next() {
            bail!("connecting WebSockets failed: {err:#}");
        }
        let per = |total: f64| (total - before) / n.max(1) as f64;
        Ok(vec![
            metric("idle RSS", "MiB", gateway.idle_rss_kib as f64 / 1024.0),
            metric("RSS before", "MiB", before / 1024.0),
            metric("per idle kernel", "KiB", per(with_kernels)),
            metric("per kernel + client", "KiB", per(with_clients)),
        ])
    }
    .await;
    let failed = delete_many(gateway, &ids, sizes.bulk_parallelism).await;
    if failed > 0 && result.is_ok() {
        bail!("{failed} of {} kernel deletes failed", ids.len());
    }
    result
}

// ---------------------------------------------------------------------------------------------
// 7. scale
// ---------------------------------------------------------------------------------------------

/// What one load client saw.
#[derive(Debug, Default)]
struct ClientLoad {
    latencies_ms: Vec<f64>,
    sent: usize,
    dropped: Option<String>,
}

/// How long clients wait for outstanding replies after the run.
const DRAIN: Duration = Duration::from_secs(5);

/// One client: every `period` (from `first`, until `end`) an `echo x` execute; latency from the
/// scheduled send time (so a stalled client or gateway is not hidden) to the later of the
/// execute_reply and the idle status.
async fn load_client(
    mut ws: WsClient,
    first: Instant,
    end: Instant,
    period: Duration,
) -> ClientLoad {
    let mut out = ClientLoad::default();
    // msg_id → (scheduled at, reply seen, idle seen)
    let mut pending: HashMap<String, (Instant, bool, bool)> = HashMap::new();
    let mut next = first;
    loop {
        let sending = next < end;
        if !sending && pending.is_empty() {
            break;
        }
        let wake = if sending { next } else { end + DRAIN };
        tokio::select! {
            () = tokio::time::sleep_until(wake) => {
                if !sending {
                    break;
                }
                let (msg_id, msg) = ws.request("execute_request", &ExecuteRequest::new("echo x"));
                pending.insert(msg_id, (next, false, false));
                out.sent += 1;
                next += period;
                if let Err(err) = ws.send(Channel::Shell, &msg).await {
                    out.dropped = Some(format!("{err:#}"));
                    break;
                }
            }
            received = ws.recv() => {
                let seen = match received {
                    Ok(Some(seen)) => seen,
                    Ok(None) => {
                        out.dropped = Some("closed by the gateway".to_owned());
                        break;
                    }
                    Err(err) => {
                        out.dropped = Some(format!("{err:#}"));
                        break;
                    }
                };
                let Some(parent) = seen.parent.as_deref() else { continue };
                let Some(entry) = pending.get_mut(parent) else { continue };
                match (seen.channel, seen.msg_type.as_str()) {
                    (Channel::Shell, "execute_reply") => entry.1 = true,
                    (Channel::Iopub, "status") if target::is_idle(&seen.msg) => entry.2 = true,
                    _ => continue,
                }
                if entry.1 && entry.2 {
                    out.latencies_ms.push(ms(seen.at - entry.0));
                    pending.remove(parent);
                }
            }
        }
    }
    ws.close().await;
    out
}

async fn connect_ready(gateway: &Gateway, env: &Env, id: &str) -> Result<WsClient> {
    let mut ws = WsClient::connect(gateway.port, id, env.ws).await?;
    ws.shell_round_trip(
        "kernel_info_request",
        &KernelInfoRequest {},
        target::KERNEL_READY_TIMEOUT,
    )
    .await?;
    Ok(ws)
}

/// Kernels whose heartbeat a scale row pings directly while the load runs, spread over the list.
const HEARTBEAT_PROBES: usize = 20;
/// Pause between two pings of one probed kernel.
const HEARTBEAT_PERIOD: Duration = Duration::from_millis(250);
/// Pings per probed kernel before the load starts (the idle round trip).
const HEARTBEAT_IDLE_PINGS: usize = 5;
/// An echo later than this counts as missed (the gateway pings every 3 s and waits as long).
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3);
/// What the gateway logs when a kernel missed its heartbeats (supervisor.rs).
const HEARTBEAT_LOST_LINE: &str = "kernel is not answering heartbeats";

/// The connection files of up to `count` of the kernels the gateway launched, spread over them
/// (a test kernel takes its connection file as its last argument).
fn probed_kernels(kernel_pids: &[i32], count: usize) -> Vec<jupyter_protocol::ConnectionInfo> {
    let files: Vec<std::path::PathBuf> = kernel_pids
        .iter()
        .filter_map(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).ok())
        .filter_map(|cmdline| {
            cmdline
                .split(|&b| b == 0)
                .map(|arg| String::from_utf8_lossy(arg).into_owned())
                .find(|arg| arg.ends_with(".json"))
                .map(std::path::PathBuf::from)
        })
        .collect();
    let step = (files.len() / count.max(1)).max(1);
    files
        .iter()
        .step_by(step)
        .take(count)
        .filter_map(|file| jupyter_protocol::ConnectionInfo::read(file).ok())
        .collect()
}

/// Heartbeat round trips of the probed kernels, measured by pinging their hb sockets directly.
#[derive(Debug, Default)]
struct HeartbeatProbe {
    rtts_ms: Vec<f64>,
    missed: usize,
}

/// Pings each kernel's heartbeat every [`HEARTBEAT_PERIOD`] until `end` (or `pings` times).
async fn probe_heartbeats(
    infos: &[jupyter_protocol::ConnectionInfo],
    end: Instant,
    pings: usize,
) -> HeartbeatProbe {
    let opts = jupyter_protocol::sockets::SocketOptions::default();
    let probes = infos.iter().enumerate().map(|(i, info)| {
        let mut hb = jupyter_protocol::sockets::Heartbeat::new(info, &opts);
        // Spread the probes' phases over one period.
        let phase = HEARTBEAT_PERIOD.mul_f64(i as f64 / infos.len().max(1) as f64);
        async move {
            let mut out = HeartbeatProbe::default();
            let mut next = Instant::now() + phase;
            for _ in 0..pings {
                if next >= end {
                    break;
                }
                tokio::time::sleep_until(next).await;
                let sent = Instant::now();
                match hb.ping(HEARTBEAT_TIMEOUT).await {
                    Ok(()) => out.rtts_ms.push(ms(sent.elapsed())),
                    Err(_) => out.missed += 1,
                }
                next += HEARTBEAT_PERIOD;
            }
            out
        }
    });
    let mut all = HeartbeatProbe::default();
    for probe in futures_util::future::join_all(probes).await {
        all.rtts_ms.extend(probe.rtts_ms);
        all.missed += probe.missed;
    }
    all
}

async fn scale(env: &Env, sizes: &Sizes, gateway: &Gateway, n: usize) -> Result<Vec<Metric>> {
    let pid = gateway.pid();
    let t_setup = Instant::now();
    let started = start_many(gateway, &env.test_kernel, n, sizes.bulk_parallelism).await;
    let mut ids = Vec::new();
    let mut start_errors = Vec::new();
    for s in started {
        match s {
            Ok(id) => ids.push(id),
            Err(err) => start_errors.push(format!("{err:#}")),
        }
    }
    let result = async {
        if let Some(first) = start_errors.first() {
            bail!(
                "{} of {n} kernel starts failed; first: {first}",
                start_errors.len()
            );
        }
        let connects: Vec<Result<WsClient>> = futures_util::stream::iter(&ids)
            .map(|id| connect_ready(gateway, env, id))
            .buffer_unordered(sizes.bulk_parallelism.max(1))
            .collect()
            .await;
        let mut clients = Vec::with_capacity(n);
        let mut connect_errors = Vec::new();
        for c in connects {
            match c {
                Ok(ws) => clients.push(ws),
                Err(err) => connect_errors.push(format!("{err:#}")),
            }
        }
        if let Some(first) = connect_errors.first() {
            futures_util::future::join_all(clients.into_iter().map(WsClient::close)).await;
            bail!(
                "{} of {n} WebSocket connects failed; first: {first}",
                connect_errors.len()
            );
        }
        let setup = t_setup.elapsed();
        // The kernels' own heartbeat round trip, idle, then under the load below.
        let probed = probed_kernels(&proc::descendants(pid), HEARTBEAT_PROBES);
        let far = Instant::now() + Duration::from_secs(3600);
        let hb_idle = probe_heartbeats(&probed, far, HEARTBEAT_IDLE_PINGS).await;

        let period = Duration::from_secs_f64(1.0 / sizes.scale_rate);
        let run = Duration::from_secs_f64(sizes.scale_seconds);
        let begin = Instant::now() + Duration::from_millis(200);
        let end = begin + run;
        let ticks0 = proc::read_stat(pid).map(|s| s.cpu_ticks);
        // Where the machine's CPU goes: the gateway, its kernels, and this process's clients.
        let kernels = proc::descendants(pid);
        let own = i32::try_from(std::process::id()).unwrap_or(0);
        let kernel_ticks0 = proc::cpu_ticks_of(&kernels);
        let client_ticks0 = proc::cpu_ticks_of(&[own]);
        let machine0 = proc::machine_ticks();
        let tasks: Vec<_> = clients
            .into_iter()
            .enumerate()
            .map(|(i, ws)| {
                // Spread the clients' phases evenly over one period.
                let phase = period.mul_f64(i as f64 / n.max(1) as f64);
                tokio::spawn(load_client(ws, begin + phase, end, period))
            })
            .collect();
        let hb_load = {
            let probed = probed.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(begin).await;
                probe_heartbeats(&probed, end, usize::MAX).await
            })
        };
        tokio::time::sleep_until(end).await;
        let ticks1 = proc::read_stat(pid).map(|s| s.cpu_ticks);
        let kernel_ticks = proc::cpu_ticks_of(&kernels).saturating_sub(kernel_ticks0);
        let client_ticks = proc::cpu_ticks_of(&[own]).saturating_sub(client_ticks0);
        let machine_busy = match (machine0, proc::machine_ticks()) {
            (Some((busy0, total0)), Some((busy1, total1))) if total1 > total0 => {
                (busy1.saturating_sub(busy0)) as f64 / (total1 - total0) as f64 * 100.0
            }
            _ => f64::NAN,
        };
        let rss = proc::rss_kib(pid).unwrap_or(0) as f64 / 1024.0;
        let fds = proc::open_fds(pid).unwrap_or(0) as f64;
        let mut latencies = Vec::new();
        let mut sent = 0usize;
        let mut dropped = 0usize;
        let mut first_drop = None;
        // Each kernel's own p99: how evenly an overload is shared out.
        let mut kernel_p99s = Vec::with_capacity(n);
        for task in tasks {
            let load = task.await.context("load client task")?;
            sent += load.sent;
            if !load.latencies_ms.is_empty() {
                kernel_p99s.push(stats::percentile(&load.latencies_ms, 99.0));
            }
            latencies.extend(load.latencies_ms);
            if let Some(reason) = load.dropped {
                dropped += 1;
                first_drop.get_or_insert(reason);
            }
        }
        if let Some(reason) = first_drop {
            eprintln!("  scale {n}: {dropped} sockets dropped; first: {reason}");
        }
        let hb_load = hb_load.await.context("heartbeat probe task")?;
        let hb_lost_logged = gateway
            .log_tail(usize::MAX)
            .lines()
            .filter(|line| line.contains(HEARTBEAT_LOST_LINE))
            .count();
        let share = |ticks: u64| {
            ticks as f64 / proc::clock_ticks_per_second() as f64 / run.as_secs_f64() * 100.0
        };
        let cpu = match (ticks0, ticks1) {
            (Some(a), Some(b)) => share(b.saturating_sub(a)),
            _ => f64::NAN,
        };
        let completed = latencies.len();
        let summary = stats::Summary::of(&latencies);
        Ok(vec![
            metric("p50", "ms", summary.median),
            metric("p99", "ms", stats::percentile(&latencies, 99.0)),
            metric("max", "ms", summary.max),
            metric(
                "per-kernel p99, lowest",
                "ms",
                stats::percentile(&kernel_p99s, 0.0),
            ),
            metric(
                "per-kernel p99, median",
                "ms",
                stats::percentile(&kernel_p99s, 50.0),
            ),
            metric(
                "per-kernel p99, highest",
                "ms",
                stats::percentile(&kernel_p99s, 100.0),
            ),
            metric(
                "heartbeat RTT idle, p50",
                "ms",
                stats::percentile(&hb_idle.rtts_ms, 50.0),
            ),
            metric(
                "heartbeat RTT under load, p50",
                "ms",
                stats::percentile(&hb_load.rtts_ms, 50.0),
            ),
            metric(
                "heartbeat RTT under load, p99",
                "ms",
                stats::percentile(&hb_load.rtts_ms, 99.0),
            ),
            metric(
                "heartbeat RTT under load, max",
                "ms",
                stats::percentile(&hb_load.rtts_ms, 100.0),
            ),
            metric(
                "heartbeat pings missed (> 3 s)",
                "count",
                (hb_idle.missed + hb_load.missed) as f64,
            ),
            metric("heartbeat probed kernels", "count", probed.len() as f64),
            metric(
                "gateway 'not answering heartbeats' lines",
                "count",
                hb_lost_logged as f64,
            ),
            metric("dropped sockets", "count", dropped as f64),
            metric("lost requests", "count", (sent - completed) as f64),
            metric("completed", "req/s", completed as f64 / run.as_secs_f64()),
            metric("gateway CPU", "% of a core", cpu),
            metric("kernels CPU", "% of a core", share(kernel_ticks)),
            metric("clients CPU", "% of a core", share(client_ticks)),
            metric("machine busy", "% of all cores", machine_busy),
            metric("gateway RSS", "MiB", rss),
            metric("gateway fds", "count", fds),
            metric("setup (start+connect)", "s", setup.as_secs_f64()),
        ])
    }
    .await;
    let failed = delete_many(gateway, &ids, sizes.bulk_parallelism).await;
    if failed > 0 && result.is_ok() {
        bail!("{failed} of {} kernel deletes failed", ids.len());
    }
    result
}

/// Starts kernels on the balanced target's second gateway, kills it with SIGKILL and waits until
/// the store shows the first one's lease on every kernel.
async fn takeover(env: &Env, gateway: &Gateway) -> Result<Vec<Metric>> {
    const KERNELS: usize = 3;
    let (victim_port, pid, store) = gateway
        .balanced_parts()
        .context("takeover runs on the balanced target only")?;
    let mut ids = Vec::new();
    for _ in 0..KERNELS {
        ids.push(client::start_kernel(victim_port, env.python.name).await?);
    }
    let killed = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    let deadline = killed + Duration::from_secs(120);
    loop {
        let left = tokio::task::spawn_blocking({
            let store = store.clone();
            move || super::balanced::rows_not_of(&store, "bench-a")
        })
        .await??;
        if left == 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!("{left} kernel(s) not taken over after 120 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = killed.elapsed();
    Ok(vec![metric("supervised again", "s", took.as_secs_f64())])
}
