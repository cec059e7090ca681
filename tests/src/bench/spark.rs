//! The Spark start rows (`spark_*`, issue 18): a Python kernel with a Spark session on a real
//! Spark standalone master, started over SSH in each of the three Spark context initialization
//! modes, through our gateway and through Enterprise Gateway 3.3.0 with the same kernelspec.
//!
//! Each run measures two times from the `POST /api/kernels`: until the kernel answers
//! `kernel_info` over the WebSocket (the start), and until the first cell that uses `spark` (a
//! DataFrame counted on the master) has replied. With `lazy` the start should answer before the
//! Spark application exists and the first cell waits for it; with `eager` the start includes it.
//!
//! Backend: SSH to this machine's real sshd on [`ssh::HOST`] with EG's `DistributedProcessProxy`
//! metadata. Both gateways support it fully, and it runs the Spark driver as a deployment does
//! (`spark-submit` in client mode on the remote host, executors on the master's worker); the
//! YARN emulator is not a Spark-on-YARN runtime, so a session made in its application master
//! goes to the standalone master anyway and would add nothing but the emulator.
//!
//! Kernelspecs, written into the run's `JUPYTER_PATH`:
//! * `bench_spark_{none,lazy,eager}`: gateway_provisioners' own `jupyter-ssh-spec install --spark
//!   --spark-init-mode <mode>` output (its `run.sh` runs `spark-submit ... launch_ipykernel.py
//!   --spark-context-initialization-mode <mode>`), with the deployment values its installer
//!   leaves to the operator (`PYSPARK_PYTHON`, small Spark settings in `SPARK_OPTS`), EG's
//!   process-proxy metadata instead of GP's provisioner metadata (EG 3.3.0 reads only the
//!   former, ours both) and without `--transport-encryption {transport_encryption}` (EG 3.3.0
//!   does not substitute it; ours makes it empty).
//! * `bench_spark_agent_{lazy,eager}`: our agent (`kernel-launcher
//!   --spark-context-initialization-mode <mode> -- python -m ipykernel_launcher`) on the same host,
//!   the session from `PYSPARK_SUBMIT_ARGS`. GP's launcher starts the session in a background
//!   thread in both `lazy` and `eager` (0.5.0 has no waiting variant); the agent's `eager` waits.
//!   The kernel's argv names the agent's connection file `{agent_connection_file}`, because EG
//!   fills `{connection_file}` with a file of its own before the agent runs.
//!
//! The direct floor (on the GP rows) is the same ipykernel started by the benchmark, whose cell
//! creates the session itself (no gateway, no launcher, no SSH, no `spark-submit` wrapper).
//!
//! What every run checks: the count is right and its application is on the master; the kernel
//! runs in an SSH session to the host; `lazy` rows: no application of the kernel at the moment
//! the start answered; the agent's `eager`: one there already; after the DELETE (within seconds)
//! the application has left the master's active list, and no process is left with the kernel
//! id, the application id (executors) or the run's Spark directory (drivers) on its command line.
//!
//! The rows run only when `--only` names them (`--only spark`), never in a default or `--quick`
//! run: they need `.venv-spark3`, Java and a minute per kernel of JVM start-ups.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use jupyter_protocol::content::{KernelInfoRequest, Stream};
use serde::Deserialize;
use tokio::time::Instant;

use super::client::{self, WsClient};
use super::proc;
use super::report::Sample;
use super::ssh;
use super::target::{self, Env, Gateway, Session, Spec, TargetKind};
use super::workloads::{Backend, Kind, Metric, Workload};
use test_support::spark::SparkCluster;

/// Which launcher a row's kernelspec runs on the SSH host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Launcher {
    /// gateway_provisioners' `run.sh` + `launch_ipykernel.py` under `spark-submit`.
    Gp,
    /// Our agent, `kernel-launcher`, starting ipykernel.
    Agent,
}

/// One row.
#[derive(Debug, Clone, Copy)]
struct Row {
    id: &'static str,
    spec: &'static str,
    launcher: Launcher,
    mode: &'static str,
}

const ROWS: [Row; 5] = [
    Row {
        id: "spark_none",
        spec: "bench_spark_none",
        launcher: Launcher::Gp,
        mode: "none",
    },
    Row {
        id: "spark_lazy",
        spec: "bench_spark_lazy",
        launcher: Launcher::Gp,
        mode: "lazy",
    },
    Row {
        id: "spark_eager",
        spec: "bench_spark_eager",
        launcher: Launcher::Gp,
        mode: "eager",
    },
    Row {
        id: "spark_agent_lazy",
        spec: "bench_spark_agent_lazy",
        launcher: Launcher::Agent,
        mode: "lazy",
    },
    Row {
        id: "spark_agent_eager",
        spec: "bench_spark_agent_eager",
        launcher: Launcher::Agent,
        mode: "eager",
    },
];

impl Row {
    fn title(&self) -> String {
        let how = match self.launcher {
            Launcher::Gp => "GP's run.sh + launch_ipykernel.py",
            Launcher::Agent => "our agent kernel-launcher",
        };
        format!(
            "Spark kernel over SSH to {}, {how}, --spark-context-initialization-mode {}: start → \
             kernel_info_reply, and → first DataFrame count on the standalone master",
            ssh::HOST,
            self.mode
        )
    }

    fn has_floor(&self) -> bool {
        self.launcher == Launcher::Gp
    }

    fn by_id(id: &str) -> Option<Row> {
        ROWS.iter().copied().find(|r| r.id == id)
    }
}

/// The rows `--only` selects (by id prefix, as for the other rows); none without `--only`.
/// They are reported as workloads whose kind is a start over SSH, but run only by [`run`].
pub(crate) fn workloads(only: &[String]) -> Vec<Workload> {
    ROWS.iter()
        .filter(|r| {
            only.iter()
                .any(|p| !p.is_empty() && r.id.starts_with(p.as_str()))
        })
        .map(|r| Workload {
            id: r.id.to_owned(),
            title: r.title(),
            kind: Kind::Start(Backend::Ssh),
        })
        .collect()
}

/// The small Spark settings every session gets (one core of the worker's two, 512 MB), and the
/// run's local dir, which puts the Spark directory on every driver's command line.
fn small_settings(local_dir: &Path) -> String {
    format!(
        "--conf spark.cores.max=1 --conf spark.executor.memory=512m --driver-memory 512m \
         --conf spark.ui.enabled=false --conf spark.ui.showConsoleProgress=false \
         --conf spark.driver.host=127.0.0.1 \
         --conf spark.driver.bindAddress=127.0.0.1 --conf spark.local.dir={}",
        local_dir.display()
    )
}

/// The cell every row times: makes the session where the launcher did not, counts 500 rows on
/// the cluster and names the application.
const SPARK_CELL: &str = "if 'spark' not in globals():\n    \
    from pyspark.sql import SparkSession\n    \
    spark = SparkSession.builder.getOrCreate()\n\
    print('COUNT', spark.range(1000).filter('id % 2 = 0').count(), 'APP', \
    spark.sparkContext.applicationId, flush=True)\n";

/// `.venv-spark3` (pyspark 3.5.7; `cargo xtask setup`).
fn venv_spark3(root: &Path) -> Result<PathBuf> {
    let dir = root.join(".venv-spark3");
    if !dir.join("bin/python").exists() {
        bail!(
            "{} is missing: run `cargo xtask setup` (pyspark from requirements/spark3.txt)",
            dir.display()
        );
    }
    Ok(dir)
}

/// pyspark's package directory in `venv`, a Spark distribution (`bin/spark-submit`, `jars/`).
fn spark_home(venv: &Path) -> Result<PathBuf> {
    let lib = venv.join("lib");
    for entry in std::fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))? {
        let candidate = entry?.path().join("site-packages/pyspark");
        if candidate.join("bin/spark-submit").exists() {
            return Ok(candidate);
        }
    }
    bail!("no pyspark with bin/spark-submit under {}", lib.display())
}

// ---------------------------------------------------------------------------------------------
// The standalone master
// ---------------------------------------------------------------------------------------------

/// The cluster is test-support's [`SparkCluster`] (master and worker on 127.0.0.1), started off
/// the runtime's threads (it blocks until the worker has registered). The ids of its master's
/// active applications:
async fn active_apps(cluster: &SparkCluster) -> Result<BTreeSet<String>> {
    #[derive(Deserialize)]
    struct App {
        id: String,
    }
    #[derive(Deserialize)]
    struct State {
        #[serde(default)]
        activeapps: Vec<App>,
    }
    let (status, body) = client::http(cluster.ui_port, "GET", "/json/", None).await?;
    if status != 200 {
        bail!("the Spark master's /json/ answered {status}");
    }
    let state: State = serde_json::from_slice(&body).context("the Spark master's /json/")?;
    Ok(state.activeapps.into_iter().map(|a| a.id).collect())
}

// ---------------------------------------------------------------------------------------------
// Kernelspecs
// ---------------------------------------------------------------------------------------------

/// Where the run's Spark pieces are.
struct Setup {
    cluster: SparkCluster,
    /// `spark.local.dir` of every driver: on each driver's command line.
    local_dir: PathBuf,
    /// The floor's kernel (ipykernel of `.venv-spark3`).
    floor: Spec,
    /// The floor cell's preamble: the session settings the kernelspecs carry in their env.
    floor_preamble: String,
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// EG's metadata for a kernel on the SSH host (a string: EG splits it on commas).
fn ssh_metadata() -> serde_json::Value {
    serde_json::json!({"process_proxy": {
        "class_name": "enterprise_gateway.services.processproxies.distributed.DistributedProcessProxy",
        "config": {"remote_hosts": ssh::HOST},
    }})
}

/// What GP's kernelspecs are given beyond what its installer writes.
struct GpSettings<'a> {
    /// The Spark distribution (`--spark-home`).
    home: &'a Path,
    /// `PYSPARK_PYTHON` (the installer leaves a placeholder path).
    python: &'a Path,
    /// `--spark-master`.
    master: &'a str,
    /// Appended to `SPARK_OPTS`.
    extra: &'a str,
    /// `TMPDIR` of the kernel.
    tmp: &'a Path,
}

/// GP's SSH Spark kernelspec for `mode`, made by its installer into `<kernels_parent>/kernels/<name>`.
fn write_gp_spec(
    root: &Path,
    kernels_parent: &Path,
    name: &str,
    mode: &str,
    settings: &GpSettings<'_>,
) -> Result<()> {
    let installer = root.join(".venv/bin/jupyter-ssh-spec");
    let output = Command::new(&installer)
        .args(["install", "--user", "--spark", "--language=Python"])
        .arg(format!("--spark-init-mode={mode}"))
        .arg(format!("--kernel-name={name}"))
        .arg(format!("--spark-home={}", settings.home.display()))
        .arg(format!("--spark-master={}", settings.master))
        .arg(format!("--remote-hosts={}", ssh::HOST))
        .env("JUPYTER_DATA_DIR", kernels_parent)
        .env_remove("JUPYTER_PATH")
        .env_remove("SPARK_HOME")
        .output()
        .with_context(|| format!("running {}", installer.display()))?;
    if !output.status.success() {
        bail!(
            "jupyter-ssh-spec install --spark-init-mode={mode} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // GP names a Python spec `<name>_spark` with --spark in some versions, `<name>` in others.
    let kernels = kernels_parent.join("kernels");
    let installed = [name.to_owned(), format!("{name}_spark")]
        .into_iter()
        .map(|n| kernels.join(n))
        .find(|d| d.join("kernel.json").exists())
        .with_context(|| format!("jupyter-ssh-spec wrote no {name} kernelspec"))?;
    let target_dir = kernels.join(name);
    if installed != target_dir {
        std::fs::rename(&installed, &target_dir)?;
    }
    let path = target_dir.join("kernel.json");
    let mut spec = read_json(&path)?;
    // Without `--transport-encryption {transport_encryption}`: EG 3.3.0 leaves the placeholder.
    let argv: Vec<serde_json::Value> = spec["argv"]
        .as_array()
        .context("the kernelspec has no argv")?
        .clone();
    let mut kept = Vec::new();
    let mut skip = false;
    for arg in argv {
        if skip {
            skip = false;
            continue;
        }
        if arg.as_str() == Some("--transport-encryption") {
            skip = true;
            continue;
        }
        kept.push(arg);
    }
    spec["argv"] = kept.into();
    let opts = spec["env"]["SPARK_OPTS"]
        .as_str()
        .context("GP's kernelspec has no SPARK_OPTS")?
        .to_owned();
    let env = spec["env"]
        .as_object_mut()
        .context("the kernelspec has no env")?;
    env.remove("PYTHONPATH");
    env.insert(
        "SPARK_OPTS".into(),
        format!("{opts} {}", settings.extra).into(),
    );
    env.insert(
        "PYSPARK_PYTHON".into(),
        settings.python.display().to_string().into(),
    );
    env.insert("SPARK_LOCAL_IP".into(), "127.0.0.1".into());
    env.insert("TMPDIR".into(), settings.tmp.display().to_string().into());
    spec["metadata"] = ssh_metadata();
    spec["display_name"] = name.into();
    std::fs::write(&path, serde_json::to_string_pretty(&spec)?)?;
    Ok(())
}

/// Starts the master and writes every row's kernelspec under `env.dir`.
async fn set_up(env: &Env, agent: &Path) -> Result<Setup> {
    let venv = venv_spark3(&env.root)?;
    let home = spark_home(&venv)?;
    if !Path::new("/usr/bin/java").exists() {
        bail!("/usr/bin/java is missing (Java 17 for Spark; `cargo xtask setup` installs it)");
    }
    let dir = env.dir.path().join("spark");
    let local_dir = dir.join("local");
    let tmp = env.dir.path().join("tmp");
    for sub in [&dir, &local_dir, &tmp] {
        std::fs::create_dir_all(sub)?;
    }
    let cluster = {
        let (home, dir) = (home.clone(), dir.clone());
        tokio::task::spawn_blocking(move || SparkCluster::start(&home, &dir)).await??
    };
    let python = venv.join("bin/python");
    let extra = small_settings(&local_dir);
    let settings = GpSettings {
        home: &home,
        python: &python,
        master: &cluster.url,
        extra: &extra,
        tmp: &tmp,
    };
    for row in ROWS.iter().filter(|r| r.launcher == Launcher::Gp) {
        write_gp_spec(&env.root, env.dir.path(), row.spec, row.mode, &settings)?;
    }
    let submit_args = format!("--master {} {extra} pyspark-shell", cluster.url);
    for row in ROWS.iter().filter(|r| r.launcher == Launcher::Agent) {
        let mut argv: Vec<String> = vec![agent.display().to_string()];
        for (flag, value) in [
            ("--kernel-id", "{kernel_id}"),
            ("--response-address", "{response_address}"),
            ("--public-key", "{public_key}"),
            ("--port-range", "{port_range}"),
            ("--spark-context-initialization-mode", row.mode),
        ] {
            argv.push(flag.into());
            argv.push(value.into());
        }
        argv.push("--".into());
        argv.extend(
            [
                &python.display().to_string(),
                "-m",
                "ipykernel_launcher",
                "-f",
                "{agent_connection_file}",
            ]
            .map(|s| s.to_owned()),
        );
        let spec = serde_json::json!({
            "argv": argv,
            "display_name": row.spec,
            "language": "python",
            "env": {
                "SPARK_HOME": home,
                "PYSPARK_PYTHON": python,
                "PYSPARK_SUBMIT_ARGS": submit_args,
                "SPARK_LOCAL_IP": "127.0.0.1",
                "TMPDIR": tmp,
            },
            "metadata": ssh_metadata(),
        });
        let spec_dir = env.dir.path().join("kernels").join(row.spec);
        std::fs::create_dir_all(&spec_dir)?;
        std::fs::write(spec_dir.join("kernel.json"), spec.to_string())?;
    }
    let floor = Spec {
        name: "bench_spark_floor",
        argv: vec![
            python.display().to_string(),
            "-m".into(),
            "ipykernel_launcher".into(),
            "-f".into(),
            "{connection_file}".into(),
        ],
        metadata: serde_json::json!({}),
    };
    let floor_preamble = format!(
        "import os\nos.environ['PYSPARK_SUBMIT_ARGS'] = {submit:?}\n\
         os.environ['SPARK_HOME'] = {home:?}\nos.environ['SPARK_LOCAL_IP'] = '127.0.0.1'\n",
        submit = submit_args,
        home = home.display().to_string(),
    );
    Ok(Setup {
        cluster,
        local_dir,
        floor,
        floor_preamble,
    })
}

// ---------------------------------------------------------------------------------------------
// One run
// ---------------------------------------------------------------------------------------------

/// How long a start may take (EG's default launch timeout of 30 s is too short for an eager
/// session on a loaded machine; both gateways take `KERNEL_LAUNCH_TIMEOUT` from the request).
const LAUNCH_TIMEOUT_SECS: u64 = 180;

/// How long the first Spark cell may take.
const CELL_TIMEOUT: Duration = Duration::from_secs(240);

/// How long the application and the processes may linger after the DELETE returned.
const GONE_GRACE: Duration = Duration::from_secs(30);

/// Starts `spec` on `gateway` as Jupyter Server would (with `KERNEL_LAUNCH_TIMEOUT`), waits for
/// the first kernel_info reply over the WebSocket.
async fn start_on_gateway(env: &Env, gateway: &Gateway, spec: &str) -> Result<Session> {
    #[derive(Deserialize)]
    struct Model {
        id: String,
    }
    let body = serde_json::json!({
        "name": spec,
        "env": {"KERNEL_LAUNCH_TIMEOUT": LAUNCH_TIMEOUT_SECS.to_string()},
    })
    .to_string();
    let (status, answer) = client::http(gateway.port, "POST", "/api/kernels", Some(&body)).await?;
    if status != 201 {
        bail!(
            "POST /api/kernels answered {status}: {}",
            String::from_utf8_lossy(&answer)
                .chars()
                .take(400)
                .collect::<String>()
        );
    }
    let kernel_id = serde_json::from_slice::<Model>(&answer)
        .context("kernel model JSON")?
        .id;
    let connected = async {
        let mut ws = WsClient::connect(gateway.port, &kernel_id, env.ws).await?;
        ws.shell_round_trip(
            "kernel_info_request",
            &KernelInfoRequest {},
            Duration::from_secs(LAUNCH_TIMEOUT_SECS),
        )
        .await?;
        anyhow::Ok(ws)
    }
    .await;
    match connected {
        Ok(ws) => Ok(Session::Gateway {
            port: gateway.port,
            kernel_id,
            ws: Box::new(ws),
        }),
        Err(err) => {
            let _ = client::delete_kernel(gateway.port, &kernel_id).await;
            let _ = proc::await_kernel_gone(&kernel_id).await;
            Err(err)
        }
    }
}

/// Runs `code`; its stream text, or an error naming the exception the kernel reported.
async fn run_cell(session: &mut Session, code: &str, timeout: Duration) -> Result<String> {
    let mut text = String::new();
    let mut error = None;
    session
        .execute(code, timeout, &mut |msg_type, msg, _| match msg_type {
            "stream" => {
                if let Ok(stream) = msg.parse_content::<Stream>() {
                    text.push_str(&stream.text);
                }
            }
            "error" => {
                let content: serde_json::Value =
                    serde_json::from_slice(&msg.content).unwrap_or_default();
                error = Some(format!("{}: {}", content["ename"], content["evalue"]));
            }
            _ => {}
        })
        .await?;
    if let Some(error) = error {
        bail!("the cell raised {error}; its output: {text}");
    }
    Ok(text)
}

/// The count and the application id the Spark cell printed (Spark's console progress bar may
/// share the line, separated by carriage returns).
fn parse_count(printed: &str) -> Result<(u64, String)> {
    let at = printed
        .rfind("COUNT ")
        .with_context(|| format!("the Spark cell printed no COUNT line: {printed:?}"))?;
    let line = printed[at..].lines().next().unwrap_or_default();
    match line.split_whitespace().collect::<Vec<_>>().as_slice() {
        ["COUNT", count, "APP", app] => Ok((
            count
                .parse()
                .with_context(|| format!("`{count}` is not a count"))?,
            (*app).to_owned(),
        )),
        _ => bail!("unexpected COUNT line: {line:?}"),
    }
}

/// Waits until no process other than this one has `needle` in an argument; kills and reports
/// what is still there after [`GONE_GRACE`].
async fn await_no_process_with(needle: &str, what: &str) -> Result<()> {
    let deadline = Instant::now() + GONE_GRACE;
    loop {
        let left = proc::with_argument(needle);
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            proc::kill_all(&left);
            bail!(
                "{} {what} process(es) still ran {GONE_GRACE:?} after the kernel's shutdown: \
                 {left:?}",
                left.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `app` has left the master's active applications.
async fn await_app_gone(cluster: &SparkCluster, app: &str) -> Result<()> {
    let deadline = Instant::now() + GONE_GRACE;
    while active_apps(cluster).await?.contains(app) {
        if Instant::now() >= deadline {
            bail!("Spark application {app} was still active {GONE_GRACE:?} after the shutdown");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One run of `row` against `gateway` (or the floor when `None`).
async fn run_row(
    env: &Env,
    setup: &Setup,
    row: Row,
    gateway: Option<&Gateway>,
) -> Result<Vec<Metric>> {
    // Applications of earlier runs (a failed one may have left its own) are not this kernel's.
    let before = active_apps(&setup.cluster).await?;
    let t0 = Instant::now();
    let mut session = match gateway {
        Some(gw) => start_on_gateway(env, gw, row.spec).await?,
        None => target::start_session(env, None, &setup.floor).await?,
    };
    let ready = t0.elapsed();
    let measured = async {
        let at_ready = active_apps(&setup.cluster)
            .await?
            .difference(&before)
            .count();
        let cell = match gateway {
            Some(_) => SPARK_CELL.to_owned(),
            None => format!("{}{SPARK_CELL}", setup.floor_preamble),
        };
        let printed = run_cell(&mut session, &cell, CELL_TIMEOUT).await?;
        let first_cell = t0.elapsed();
        let (count, app) = parse_count(&printed)?;
        if count != 500 {
            bail!("the DataFrame counted {count} rows, not 500");
        }
        let active = active_apps(&setup.cluster).await?;
        if !active.contains(&app) {
            bail!("the master does not list the cell's application {app}: {active:?}");
        }
        if gateway.is_some() {
            match (row.launcher, row.mode) {
                (_, "lazy") if at_ready > 0 => bail!(
                    "lazy: the kernel's Spark application already existed when the start answered"
                ),
                (Launcher::Agent, "eager") if at_ready == 0 => {
                    bail!("eager: the start answered before the Spark application existed")
                }
                _ => {}
            }
            let access = env.ssh.as_ref().context("the SSH host is not running")?;
            let printed = run_cell(
                &mut session,
                "import os; print(os.environ.get('SSH_CONNECTION', ''), flush=True)",
                Duration::from_secs(30),
            )
            .await?;
            ssh::check_ssh_connection(&printed, access)?;
        }
        Ok((at_ready, first_cell, app))
    }
    .await;
    let kernel_id = session.kernel_id().map(str::to_owned);
    let closed = session.close().await;
    let (at_ready, first_cell, app) = measured?;
    closed?;
    await_app_gone(&setup.cluster, &app).await?;
    if let Some(id) = &kernel_id {
        proc::await_kernel_gone(id).await?;
    }
    await_no_process_with(&app, "executor").await?;
    await_no_process_with(&setup.local_dir.display().to_string(), "Spark driver").await?;
    Ok(vec![
        Metric {
            name: "ready",
            unit: "ms",
            value: ms(ready),
        },
        Metric {
            name: "first Spark cell",
            unit: "ms",
            value: ms(first_cell),
        },
        Metric {
            name: "application at ready",
            unit: "count",
            value: at_ready as f64,
        },
    ])
}

/// Runs the selected Spark rows for `repeats` rounds against the floor (GP rows) and every
/// gateway in `gateway_kinds` (started with the SSH host's settings); starts the SSH host when
/// the run has none yet.
pub(crate) async fn run(
    env: &mut Env,
    rows: &[Workload],
    gateway_kinds: &[TargetKind],
    repeats: usize,
) -> Result<Vec<Sample>> {
    let rows: Vec<Row> = rows.iter().filter_map(|w| Row::by_id(&w.id)).collect();
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let agent = env.gateway_bin.with_file_name("kernel-launcher");
    if rows.iter().any(|r| r.launcher == Launcher::Agent) && !agent.exists() {
        bail!(
            "{} is missing; build it: cargo build --release -p kernel-launcher",
            agent.display()
        );
    }
    let spark_dir = env.dir.path().join("spark").display().to_string();
    let kernels_marker = env
        .dir
        .path()
        .join("kernels/bench_spark")
        .display()
        .to_string();
    // Declared first, so it is dropped last: after the master and the SSH host are gone.
    let _reaper = test_support::procfs::Reaper::new([kernels_marker.clone(), spark_dir]);
    let own_ssh = if env.ssh.is_none() {
        let host = ssh::SshHost::start(env.dir.path(), &kernels_marker)
            .await
            .context("the Spark rows need the SSH host")?;
        env.ssh = Some(host.access());
        Some(host)
    } else {
        None
    };
    let setup = set_up(env, &agent).await?;
    let mut samples = Vec::new();
    for round in 0..repeats {
        let gateways = super::start_gateways(env, gateway_kinds, true).await?;
        for &row in &rows {
            let mut targets = gateway_kinds.to_vec();
            if row.has_floor() {
                targets.insert(0, TargetKind::Direct);
            }
            for target in super::rotated(&targets, round) {
                let gateway = gateways.iter().find(|g| g.kind == target);
                let t0 = Instant::now();
                let outcome = match tokio::time::timeout(
                    Duration::from_secs(600),
                    run_row(env, &setup, row, gateway),
                )
                .await
                {
                    Ok(Ok(metrics)) => Ok(metrics),
                    Ok(Err(err)) => Err(format!("{err:#}")),
                    Err(_) => Err("timed out after 600 s".to_owned()),
                };
                let seconds = t0.elapsed().as_secs_f64();
                let shown = match &outcome {
                    Ok(metrics) => metrics
                        .iter()
                        .map(|m| format!("{}={} {}", m.name, super::report::num(m.value), m.unit))
                        .collect::<Vec<_>>()
                        .join(", "),
                    Err(err) => format!("FAILED: {}", err.lines().next().unwrap_or_default()),
                };
                println!(
                    "[round {}] {:<22} {:<13} {shown} ({seconds:.1}s)",
                    round + 1,
                    row.id,
                    target.label()
                );
                if outcome.is_err()
                    && let Some(gw) = gateway
                {
                    eprintln!("  {} log ends:\n{}", target.label(), gw.log_tail(15));
                }
                samples.push(Sample {
                    workload: row.id.to_owned(),
                    round,
                    target,
                    outcome,
                    seconds,
                });
            }
        }
        super::stop_gateways(gateways).await;
    }
    drop(setup);
    if own_ssh.is_some() {
        env.ssh = None;
    }
    drop(own_ssh);
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_only_when_named() {
        assert!(workloads(&[]).is_empty());
        assert!(workloads(&["start".to_owned()]).is_empty());
        let all: Vec<String> = workloads(&["spark".to_owned()])
            .into_iter()
            .map(|w| w.id)
            .collect();
        assert_eq!(all.len(), ROWS.len());
        let one = workloads(&["spark_agent_e".to_owned()]);
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].id, "spark_agent_eager");
    }

    #[test]
    fn count_line_is_parsed() {
        let (count, app) =
            parse_count("noise\nCOUNT 500 APP app-20261203190000-0001\n").expect("parses");
        assert_eq!((count, app.as_str()), (500, "app-20261203190000-0001"));
        assert!(parse_count("").is_err());
        assert!(parse_count("COUNT x APP y").is_err());
        assert!(parse_count("COUNT 5 APP").is_err());
        let progress = "\r[Stage 0:=====>   (1 + 1) / 2]\rCOUNT 500 APP app-1\n\r[Stage 2:>  ]\r";
        assert_eq!(parse_count(progress).expect("parses").0, 500);
    }
}
