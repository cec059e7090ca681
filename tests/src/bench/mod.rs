//! `gateway-bench`: our gateway side by side with Enterprise Gateway 3.3.0 and the direct floor.
//!
//! The harness starts the gateways itself (each in its own process group, with a raised
//! `RLIMIT_NOFILE`), writes one set of kernelspecs both use (ipykernel from `.venv` by absolute
//! path, the test kernel, the launcher), and runs every workload of [`workloads`] against each target in
//! turn, rotating the order every round, for several rounds. Clients are real WebSocket clients
//! (tokio-tungstenite over a `TcpStream` with `TCP_NODELAY`). The direct floor launches the same
//! kernel itself and drives it with `jupyter_protocol::KernelClient`. When an SSH workload is
//! selected, a real sshd on 127.0.0.2 ([`ssh`]) serves as the remote host for the whole run, and
//! those workloads get gateways of their own, configured to reach it. When a YARN workload is
//! selected, the RM emulator ([`yarn`]) runs for the whole run, and every gateway gets its
//! endpoint.
//!
//! Output: one table (medians, min–max, ours/EG, ours/floor, the issue's targets) on stdout, and
//! the same as `<out>/<date>.json` and `<out>/<date>.md`. `--quick` is a smoke run of every
//! workload at small sizes without EG; the exit status is non-zero when a workload fails outright
//! against our gateway or the floor (never because of slowness).

mod balanced;
mod client;
mod kubernetes;
mod proc;
mod profile;
mod report;
mod spark;
mod ssh;
mod stats;
mod target;
mod workloads;
mod yarn;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};
use serde_json::json;
use tokio::time::Instant;

use client::WsProtocol;
use report::{Report, Sample};
use target::{Env, Gateway, TargetKind};
use workloads::{Sizes, Workload};

const USAGE: &str = "\
usage: gateway-bench [options]

  --quick               smoke run: every workload once at small sizes, no EG, no files written
  --compare             also run Enterprise Gateway 3.3.0 (.venv-eg) on every workload
  --metrics-off         also run our gateway with --metrics_enabled=false (what metrics cost;
                        e.g. with --only execute,iopub)
  --balanced            also run two of our gateways on one PostgreSQL store behind HAProxy
                        (Debian's postgresql and haproxy), measured through the balancer;
                        e.g. with --only start,execute
  --repeats N           rounds (default 3; the target order rotates every round)
  --only IDS            comma-separated workload id prefixes (start,execute,iopub,display,
                        concurrent,memory,scale; e.g. start_ssh,execute_ssh for the SSH rows,
                        start_yarn for the YARN row)
  --execute N           execute round trips per run (default 200)
  --iopub N             stream messages in the burst (default 20000)
  --display-mb N        size of the display_data in MB (default 50)
  --concurrent LIST     concurrent start counts (default 10,50)
  --memory-kernels N    idle kernels for the memory workload (default 100)
  --scale LIST          kernel counts for the scale workload (default 100,500,1000)
  --scale-seconds S     load duration per scale run (default 20)
  --scale-rate R        requests per second per client (default 10)
  --scale-repeats N     rounds that include the scale workload (default 1)
  --ws legacy|v1        WebSocket framing (default legacy, as Jupyter Server's gateway client)
  --out DIR             write <DIR>/<date>.{json,md} (default <root>/bench/results; --quick: none)
  --no-write            write no files
  --root DIR            workspace root (default: this crate's parent)
  --bin-dir DIR         where enterprise-gateway and test-kernel are (default: this binary's dir)

usage: gateway-bench --profile-forwarding [options]   (what `cargo xtask profile-forwarding` runs)

  instructions per forwarded message, counted by callgrind on our gateway (see bench/README.md)
  --messages N          messages per counted workload (default 2000)
  --display-mb N        size of the counted display_data in MB (default 10)
  --ws legacy|v1|both   framings to profile (default both)
  --profile-dir DIR     callgrind files and annotations (default <root>/target/profile-forwarding)
  --out DIR             also write <DIR>/<date>-forwarding-profile.md (default: no file)
  --gateway-bin PATH    profile this gateway binary (e.g. a copy of an earlier build)
  --from-dumps          only summarise the dumps in --profile-dir (a run with the same counts)
  --root DIR, --bin-dir DIR as above
";

/// Parsed command line.
#[derive(Debug, Clone)]
struct Options {
    quick: bool,
    compare: bool,
    metrics_off: bool,
    balanced: bool,
    repeats: usize,
    only: Vec<String>,
    sizes: Sizes,
    concurrent: Vec<usize>,
    scale: Vec<usize>,
    scale_repeats: usize,
    ws: WsProtocol,
    out: Option<PathBuf>,
    root: PathBuf,
    bin_dir: PathBuf,
}

fn parse_list(value: &str) -> Result<Vec<usize>> {
    value
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse()
                .with_context(|| format!("`{s}` is not a number"))
        })
        .collect()
}

fn parse_options(args: &[String]) -> Result<Option<Options>> {
    let quick = args.iter().any(|a| a == "--quick");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let bin_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    let mut o = Options {
        quick,
        compare: false,
        metrics_off: false,
        balanced: false,
        repeats: if quick { 1 } else { 3 },
        only: Vec::new(),
        sizes: Sizes {
            execute_count: if quick { 20 } else { 200 },
            execute_warmup: if quick { 3 } else { 10 },
            iopub_messages: if quick { 200 } else { 20_000 },
            display_bytes: if quick { 1_000_000 } else { 50_000_000 },
            memory_kernels: if quick { 10 } else { 100 },
            scale_seconds: if quick { 2.0 } else { 20.0 },
            scale_rate: 10.0,
            bulk_parallelism: 10,
        },
        concurrent: if quick { vec![3] } else { vec![10, 50] },
        scale: if quick {
            vec![10]
        } else {
            vec![100, 500, 1000]
        },
        scale_repeats: 1,
        ws: WsProtocol::Legacy,
        out: None,
        root,
        bin_dir,
    };
    let mut no_write = quick;
    let mut out = None;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_owned())),
            _ => (arg.as_str(), None),
        };
        let mut value = || -> Result<String> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => iter
                    .next()
                    .cloned()
                    .with_context(|| format!("{name} needs a value")),
            }
        };
        match name {
            "--quick" => {}
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(None);
            }
            "--compare" => o.compare = true,
            "--metrics-off" => o.metrics_off = true,
            "--balanced" => o.balanced = true,
            "--no-write" => no_write = true,
            "--repeats" => o.repeats = value()?.parse()?,
            "--only" => o.only = value()?.split(',').map(str::to_owned).collect(),
            "--execute" => o.sizes.execute_count = value()?.parse()?,
            "--iopub" => o.sizes.iopub_messages = value()?.parse()?,
            "--display-mb" => {
                o.sizes.display_bytes = (value()?.parse::<f64>()? * 1e6) as usize;
            }
            "--concurrent" => o.concurrent = parse_list(&value()?)?,
            "--memory-kernels" => o.sizes.memory_kernels = value()?.parse()?,
            "--scale" => o.scale = parse_list(&value()?)?,
            "--scale-seconds" => o.sizes.scale_seconds = value()?.parse()?,
            "--scale-rate" => o.sizes.scale_rate = value()?.parse()?,
            "--scale-repeats" => o.scale_repeats = value()?.parse()?,
            "--ws" => {
                o.ws = match value()?.as_str() {
                    "legacy" => WsProtocol::Legacy,
                    "v1" => WsProtocol::V1,
                    other => bail!("--ws must be legacy or v1, got `{other}`"),
                }
            }
            "--out" => {
                out = Some(PathBuf::from(value()?));
                no_write = false;
            }
            "--root" => o.root = PathBuf::from(value()?),
            "--bin-dir" => o.bin_dir = PathBuf::from(value()?),
            other => bail!("unknown option `{other}`\n{USAGE}"),
        }
    }
    if o.repeats == 0 || o.sizes.scale_rate <= 0.0 || o.sizes.scale_seconds <= 0.0 {
        bail!("--repeats, --scale-rate and --scale-seconds must be positive");
    }
    if !no_write {
        o.out = Some(out.unwrap_or_else(|| o.root.join("bench/results")));
    }
    Ok(Some(o))
}

/// `--profile-forwarding` and its options: the options and where to write the table.
fn parse_profile_options(
    args: &[String],
) -> Result<(profile::ProfileOptions, PathBuf, PathBuf, Option<PathBuf>)> {
    let mut root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut bin_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    let mut options = profile::ProfileOptions {
        messages: 2000,
        display_bytes: 10_000_000,
        dir: PathBuf::new(),
        framings: vec![WsProtocol::Legacy, WsProtocol::V1],
        gateway_bin: None,
        reuse: false,
    };
    let mut dir = None;
    let mut out = None;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_owned())),
            _ => (arg.as_str(), None),
        };
        let mut value = || -> Result<String> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => iter
                    .next()
                    .cloned()
                    .with_context(|| format!("{name} needs a value")),
            }
        };
        match name {
            "--profile-forwarding" => {}
            "--messages" => options.messages = value()?.parse()?,
            "--display-mb" => {
                options.display_bytes = (value()?.parse::<f64>()? * 1e6) as usize;
            }
            "--ws" => {
                options.framings = match value()?.as_str() {
                    "legacy" => vec![WsProtocol::Legacy],
                    "v1" => vec![WsProtocol::V1],
                    "both" => vec![WsProtocol::Legacy, WsProtocol::V1],
                    other => bail!("--ws must be legacy, v1 or both, got `{other}`"),
                }
            }
            "--profile-dir" => dir = Some(PathBuf::from(value()?)),
            "--gateway-bin" => options.gateway_bin = Some(PathBuf::from(value()?)),
            "--from-dumps" => options.reuse = true,
            "--out" => out = Some(PathBuf::from(value()?)),
            "--no-write" => out = None,
            "--root" => root = PathBuf::from(value()?),
            "--bin-dir" => bin_dir = PathBuf::from(value()?),
            other => bail!("unknown option `{other}` for --profile-forwarding\n{USAGE}"),
        }
    }
    if options.messages < 4 {
        bail!("--messages must be at least 4");
    }
    options.dir = dir.unwrap_or_else(|| root.join("target/profile-forwarding"));
    Ok((options, root, bin_dir, out))
}

/// `gateway-bench --profile-forwarding`.
async fn run_profile(args: &[String]) -> Result<bool> {
    let (options, root, bin_dir, out) = parse_profile_options(args)?;
    let table = profile::run(&root, &bin_dir, &options).await?;
    println!("\n{table}");
    if let Some(out) = out {
        std::fs::create_dir_all(&out)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let date = report::utc_date(now);
        let file = out.join(format!("{date}-forwarding-profile.md"));
        std::fs::write(&file, format!("# Forwarding profile, {date}\n\n{table}"))?;
        println!("profile: wrote {}", file.display());
    }
    Ok(true)
}

/// The benchmark's options (`Some(Some(..))`), or `Some(None)` for a profiling run; `None` after
/// `--help`.
fn parse_options_or_profile(profiling: bool, args: &[String]) -> Result<Option<Option<Options>>> {
    if profiling {
        if args.iter().any(|a| a == "--help" || a == "-h") {
            print!("{USAGE}");
            return Ok(None);
        }
        return Ok(Some(None));
    }
    Ok(parse_options(args)?.map(Some))
}

/// Entry point of the `gateway-bench` binary.
pub(crate) fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let profiling = args.iter().any(|a| a == "--profile-forwarding");
    let options = match parse_options_or_profile(profiling, &args) {
        Ok(Some(o)) => o,
        Ok(None) => return ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("gateway-bench: {err:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("gateway-bench: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        tokio::select! {
            result = async {
                match options {
                    Some(options) => run(options).await,
                    None => run_profile(&args).await,
                }
            } => result,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    // Dropping the runtime drops every guard still alive (gateways, kernels).
    drop(runtime);
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("gateway-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The order of targets in round `round`: rotated so no target always goes first.
fn rotated(targets: &[TargetKind], round: usize) -> Vec<TargetKind> {
    let mut order = targets.to_vec();
    if !order.is_empty() {
        let by = round % order.len();
        order.rotate_left(by);
    }
    order
}

/// Runs one workload once against one target, bounded in time; prints a progress line.
async fn run_one(
    env: &Env,
    options: &Options,
    workload: &Workload,
    target: TargetKind,
    gateway: Option<&mut Gateway>,
    round: usize,
) -> Sample {
    let t0 = Instant::now();
    let limit = workload.time_limit(&options.sizes);
    let result =
        tokio::time::timeout(limit, workload.run(env, &options.sizes, gateway.as_deref())).await;
    let mut outcome = match result {
        Err(_) => Err(format!("timed out after {limit:?}")),
        Ok(Err(err)) => Err(format!("{err:#}")),
        Ok(Ok(metrics)) => Ok(metrics),
    };
    if let Some(gw) = gateway
        && !gw.is_running()
    {
        let reason = outcome.as_ref().err().cloned().unwrap_or_default();
        outcome = Err(format!(
            "the gateway exited during the run ({reason}); its log ends:\n{}",
            gw.log_tail(20)
        ));
    }
    let seconds = t0.elapsed().as_secs_f64();
    let shown = match &outcome {
        Ok(metrics) => metrics
            .iter()
            .map(|m| format!("{}={} {}", m.name, report::num(m.value), m.unit))
            .collect::<Vec<_>>()
            .join(", "),
        Err(err) => format!("FAILED: {}", err.lines().next().unwrap_or_default()),
    };
    println!(
        "[round {}] {:<22} {:<13} {shown} ({seconds:.1}s)",
        round + 1,
        workload.id,
        target.label()
    );
    Sample {
        workload: workload.id.clone(),
        round,
        target,
        outcome,
        seconds,
    }
}

async fn start_gateways(env: &Env, kinds: &[TargetKind], ssh: bool) -> Result<Vec<Gateway>> {
    let mut gateways = Vec::new();
    for &kind in kinds {
        gateways.push(
            Gateway::start(env, kind, ssh)
                .await
                .with_context(|| format!("starting {}", kind.label()))?,
        );
    }
    Ok(gateways)
}

async fn stop_gateways(gateways: Vec<Gateway>) {
    for gw in gateways {
        gw.stop().await;
    }
}

/// Runs everything; `Ok(false)` when a workload failed against our gateway or the floor.
async fn run(options: Options) -> Result<bool> {
    let started_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let load_before = proc::load_average();
    let biggest = options.scale.iter().copied().max().unwrap_or(0);
    let own_nofile = proc::raise_own_nofile((4 * biggest as u64 + 4096).max(8192));
    let gateway_nofile = gateway_nofile_limit();

    let mut env = Env::new(&options.root, &options.bin_dir, options.ws, gateway_nofile)?;
    let mut gateway_kinds = vec![TargetKind::Ours];
    if options.metrics_off {
        gateway_kinds.push(TargetKind::OursNoMetrics);
    }
    if options.compare {
        gateway_kinds.push(TargetKind::Eg);
    }
    if options.balanced {
        gateway_kinds.push(TargetKind::Balanced);
    }
    let mut all_targets = vec![TargetKind::Direct];
    all_targets.extend(&gateway_kinds);
    env.check(&all_targets)?;

    let workloads: Vec<Workload> =
        Workload::all(&options.sizes, &options.concurrent, &options.scale)
            .into_iter()
            .filter(|w| {
                options.only.is_empty() || options.only.iter().any(|p| w.id.starts_with(p.as_str()))
            })
            .filter(|w| options.balanced || w.kind != workloads::Kind::Takeover)
            .collect();
    // The Spark rows run only when `--only` names them, never with `--quick` (spark.rs).
    let spark_rows = if options.quick {
        Vec::new()
    } else {
        spark::workloads(&options.only)
    };
    if workloads.is_empty() && spark_rows.is_empty() {
        bail!("--only matched no workload");
    }
    // Declared after `env`, so it is dropped first: sshd stops and any kernel left on it is
    // killed before the temp dir goes.
    let _ssh_host = if workloads.iter().any(Workload::needs_ssh) {
        let script = env.ssh_launcher.argv.get(1).cloned().unwrap_or_default();
        let host = ssh::SshHost::start(env.dir.path(), &script)
            .await
            .context("the SSH workloads need an SSH host")?;
        env.ssh = Some(host.access());
        Some(host)
    } else {
        None
    };
    // Also declared after `env`: the emulator stops (killing its application masters) before
    // the temp dir goes. Started before any gateway, which all get its endpoint.
    let _yarn_cluster = if workloads.iter().any(Workload::needs_yarn) {
        let cluster = yarn::YarnCluster::start(
            &options.bin_dir,
            &env.hadoop_conf_dir,
            env.dir.path().join("logs/yarn-emulator.log"),
            &env.dir.path().join("tmp"),
        )
        .await
        .context("the YARN workloads need the RM emulator")?;
        env.yarn = Some(cluster.access());
        Some(cluster)
    } else {
        None
    };
    // Likewise the Kubernetes API-server emulator (it kills its containers when it stops).
    let _k8s_cluster = if workloads.iter().any(Workload::needs_kubernetes) {
        let script = env.launcher.argv.get(1).cloned().unwrap_or_default();
        let cluster =
            kubernetes::K8sCluster::start(&env.root, &options.bin_dir, env.dir.path(), &script)
                .await
                .context("the Kubernetes workloads need the API-server emulator")?;
        env.kubernetes = Some(cluster.access());
        Some(cluster)
    } else {
        None
    };
    println!(
        "gateway-bench: {} round(s), WebSocket framing {}, targets: {}; load average {load_before}; \
         RLIMIT_NOFILE bench {own_nofile}, gateways {gateway_nofile}",
        options.repeats,
        options.ws.as_str(),
        all_targets
            .iter()
            .map(|t| t.label())
            .collect::<Vec<_>>()
            .join(", "),
    );

    let mut samples: Vec<Sample> = Vec::new();
    let mut eg_scale_failed_at: Option<usize> = None;
    for round in 0..options.repeats {
        // The SSH workloads get gateways of their own, started with the SSH host's settings.
        for ssh in [false, true] {
            let shared: Vec<&Workload> = workloads
                .iter()
                .filter(|w| !w.fresh_gateway() && w.needs_ssh() == ssh)
                .collect();
            if shared.is_empty() {
                continue;
            }
            let mut gateways = start_gateways(&env, &gateway_kinds, ssh).await?;
            for workload in shared {
                let mut targets = gateway_kinds.clone();
                if workload.has_floor() {
                    targets.insert(0, TargetKind::Direct);
                }
                for target in rotated(&targets, round) {
                    let gateway = gateways.iter_mut().find(|g| g.kind == target);
                    let sample = run_one(&env, &options, workload, target, gateway, round).await;
                    samples.push(sample);
                    // A gateway that died is replaced for the remaining workloads.
                    if let Some(i) = gateways.iter_mut().position(|g| !g.is_running()) {
                        let dead = gateways.remove(i);
                        let (kind, ssh) = (dead.kind, dead.ssh);
                        dead.stop().await;
                        gateways.push(Gateway::start(&env, kind, ssh).await?);
                    }
                }
            }
            stop_gateways(gateways).await;
        }
        if round >= options.scale_repeats {
            continue;
        }
        for workload in workloads.iter().filter(|w| w.fresh_gateway()) {
            for target in rotated(&gateway_kinds, round) {
                // A takeover needs two gateways.
                if workload.kind == workloads::Kind::Takeover && target != TargetKind::Balanced {
                    continue;
                }
                if let (TargetKind::Eg, Some(failed_at), workloads::Kind::Scale(n)) =
                    (target, eg_scale_failed_at, &workload.kind)
                    && *n > failed_at
                {
                    println!(
                        "[round {}] {:<22} {:<13} skipped: EG already failed at {failed_at} kernels",
                        round + 1,
                        workload.id,
                        target.label()
                    );
                    continue;
                }
                let mut gateway = Gateway::start(&env, target, workload.needs_ssh()).await?;
                let sample =
                    run_one(&env, &options, workload, target, Some(&mut gateway), round).await;
                gateway.stop().await;
                if let (TargetKind::Eg, Err(_), workloads::Kind::Scale(n)) =
                    (target, &sample.outcome, &workload.kind)
                {
                    eg_scale_failed_at = Some(eg_scale_failed_at.map_or(*n, |m| m.min(*n)));
                }
                samples.push(sample);
            }
        }
    }

    samples.extend(spark::run(&mut env, &spark_rows, &gateway_kinds, options.repeats).await?);

    let load_after = proc::load_average();
    let reported: Vec<Workload> = workloads.iter().chain(&spark_rows).cloned().collect();
    let report = Report::new(&reported, &samples, &all_targets);
    println!("\n{}", report.text());
    println!(
        "direct floor = the same kernel launched by the benchmark and driven with our own \
         jupyter_protocol::KernelClient (no gateway). Load average before {load_before}, after {load_after}."
    );

    if let Some(dir) = &options.out {
        let meta = json!({
            "date": report::utc_date(started_at),
            "unix_time": started_at,
            "machine": machine_info(),
            "load_average_before": load_before,
            "load_average_after": load_after,
            "options": {
                "quick": options.quick,
                "compare": options.compare,
                "repeats": options.repeats,
                "ws": options.ws.as_str(),
                "execute_count": options.sizes.execute_count,
                "iopub_messages": options.sizes.iopub_messages,
                "display_bytes": options.sizes.display_bytes,
                "concurrent": options.concurrent,
                "memory_kernels": options.sizes.memory_kernels,
                "scale": options.scale,
                "scale_seconds": options.sizes.scale_seconds,
                "scale_rate": options.sizes.scale_rate,
                "gateway_nofile": gateway_nofile,
            },
            "floor": "the same kernel launched by the benchmark and driven with jupyter_protocol::KernelClient",
        });
        let (json_path, md_path) = write_results(dir, &meta, &report, &samples)?;
        println!("wrote {} and {}", md_path.display(), json_path.display());
    }
    let failed = report.own_failures();
    if failed > 0 {
        eprintln!("gateway-bench: {failed} run(s) against our gateway or the floor failed");
    }
    Ok(failed == 0)
}

/// `RLIMIT_NOFILE` for the gateways: 65 536 when `prlimit` may set it (root), else the hard limit.
fn gateway_nofile_limit() -> u64 {
    let want = 65_536;
    let ok = std::process::Command::new("prlimit")
        .args([&format!("--nofile={want}:{want}"), "--", "true"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        want
    } else {
        proc::nofile_limits().map_or(1024, |(_, hard)| hard)
    }
}

fn machine_info() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .map(|v| v.trim().to_owned())
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": model,
        "memory": mem,
        "linux": kernel.trim(),
    })
}

/// Writes `<dir>/<date>.json` and `<dir>/<date>.md` (with `-2`, `-3`… when taken).
fn write_results(
    dir: &Path,
    meta: &serde_json::Value,
    report: &Report,
    samples: &[Sample],
) -> Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let date = meta["date"].as_str().unwrap_or("undated").to_owned();
    let mut stem = date.clone();
    let mut n = 1;
    while dir.join(format!("{stem}.md")).exists() || dir.join(format!("{stem}.json")).exists() {
        n += 1;
        stem = format!("{date}-{n}");
    }
    let json_path = dir.join(format!("{stem}.json"));
    let md_path = dir.join(format!("{stem}.md"));
    let mut doc = meta.clone();
    if let (Some(obj), serde_json::Value::Object(body)) =
        (doc.as_object_mut(), report.json(samples))
    {
        obj.extend(body);
    }
    std::fs::write(&json_path, serde_json::to_string_pretty(&doc)?)?;

    let o = &meta["options"];
    let mut md = String::new();
    md.push_str(&format!("# Gateway benchmark, {date}\n\n"));
    md.push_str(&format!(
        "Machine: {} CPUs ({}), {} memory, Linux {}. Load average before the run {}, after {}.\n\n",
        meta["machine"]["cpus"],
        meta["machine"]["cpu_model"].as_str().unwrap_or(""),
        meta["machine"]["memory"].as_str().unwrap_or(""),
        meta["machine"]["linux"].as_str().unwrap_or(""),
        meta["load_average_before"].as_str().unwrap_or(""),
        meta["load_average_after"].as_str().unwrap_or(""),
    ));
    md.push_str(&format!(
        "Settings: {} round(s), WebSocket framing `{}`, EG compared: {}; execute ×{}, iopub burst {}, \
         display_data {} bytes, concurrent starts {}, memory with {} kernels, scale {} kernels × {} req/s \
         for {} s; gateways run with RLIMIT_NOFILE {}. Method: see [../README.md](../README.md).\n\n",
        o["repeats"], o["ws"].as_str().unwrap_or(""), o["compare"], o["execute_count"],
        o["iopub_messages"], o["display_bytes"], o["concurrent"], o["memory_kernels"],
        o["scale"], o["scale_rate"], o["scale_seconds"], o["gateway_nofile"],
    ));
    md.push_str(
        "Cells are median (min–max) over the rounds. *direct floor* = the same kernel launched by \
         the benchmark and driven with our own `jupyter_protocol::KernelClient`, no gateway.\n\n",
    );
    md.push_str(&report.markdown());
    std::fs::write(&md_path, md)?;
    Ok((json_path, md_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_quick_defaults_and_overrides() {
        let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let o = parse_options(&args(&["--quick"]))
            .expect("parses")
            .expect("not help");
        assert!(o.quick && o.out.is_none() && !o.compare);
        assert_eq!((o.repeats, o.scale.as_slice()), (1, [10].as_slice()));
        let o = parse_options(&args(&[
            "--compare",
            "--scale=5,6",
            "--ws",
            "v1",
            "--repeats",
            "2",
        ]))
        .expect("parses")
        .expect("not help");
        assert!(o.compare && o.out.is_some());
        assert_eq!(
            (o.repeats, o.scale.as_slice(), o.ws),
            (2, [5, 6].as_slice(), WsProtocol::V1)
        );
        assert!(parse_options(&args(&["--bogus"])).is_err());
        assert!(parse_options(&args(&["--repeats"])).is_err());
    }

    #[test]
    fn rotation_changes_who_goes_first() {
        let t = [TargetKind::Direct, TargetKind::Ours, TargetKind::Eg];
        assert_eq!(rotated(&t, 0)[0], TargetKind::Direct);
        assert_eq!(rotated(&t, 1)[0], TargetKind::Ours);
        assert_eq!(rotated(&t, 3)[0], TargetKind::Direct);
    }
}
