//! `kernel-launcher`: a launcher agent for any kernel, started on the kernel's host in place of
//! EG's per-language launcher scripts.
//!
//! ```text
//! kernel-launcher --RemoteProcessProxy.kernel-id {kernel_id} \
//!     --RemoteProcessProxy.response-address {response_address} \
//!     --RemoteProcessProxy.public-key {public_key} \
//!     --RemoteProcessProxy.port-range {port_range} \
//!     -- python -m ipykernel_launcher -f {connection_file}
//! ```
//!
//! Behind Enterprise Gateway, write `{agent_connection_file}` in the kernel's argv instead:
//! EG replaces `{connection_file}` with a file of its own before the agent starts.
//!
//! gateway_provisioners' names (`--kernel-id`, `--response-address`, `--public-key`,
//! `--port-range`, `--transport-encryption`) work too; `KERNEL_ID`, `RESPONSE_ADDRESS`,
//! `PUBLIC_KEY`, `PORT_RANGE` (or with an `EG_` prefix) stand in for missing arguments.
//! `--spark-context-initialization-mode none|lazy|eager` works for ipykernel, Apache Toree and
//! IRkernel (pyspark through reticulate) kernels and is refused (with the reason) for others
//! beyond `none`; see the `spark` module.
//!
//! It chooses five ports in the range, writes a private connection file (key: a fresh UUID4
//! string, ip `0.0.0.0`), starts the kernel's argv (with `{connection_file}` filled in) in its
//! own process group, sends the encrypted connection info (plus `pid`, `pgid`, `comm_port`,
//! `kernel_id`) to the gateway, and serves the communication port: `{"signum": N}` signals the
//! kernel's process group, `{"shutdown": 1}` closes the port and gives the kernel (which the
//! gateway has just sent `shutdown_request`) a grace period to exit before it is killed. Signals sent
//! to the agent itself are passed on to the kernel. When the kernel exits, the agent kills what is
//! left of the kernel's group, removes its files and exits with the kernel's status.
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use jupyter_protocol::{ConnectionInfo, Transport};
use kernel_launcher::{CommRequest, PortRange, payload, template};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

#[path = "kernel-launcher/spark.rs"]
mod spark;

use spark::SparkInit;

/// How long the kernel has to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Sending the connection info must finish within this.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// A communication-port request must arrive within this, and be at most this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_LIMIT: u64 = 64 * 1024;

macro_rules! log {
    ($($arg:tt)*) => {
        eprintln!("[kernel-launcher] {}", format_args!($($arg)*))
    };
}

/// The parsed command line.
#[derive(Debug, Default)]
struct Args {
    kernel_id: String,
    response_address: String,
    public_key: String,
    port_range: String,
    transport_encryption: String,
    spark_init: SparkInit,
    kernel_argv: Vec<String>,
}

fn parse_args(
    args: impl IntoIterator<Item = String>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Args, String> {
    let mut parsed = Args::default();
    let mut args = args.into_iter().peekable();
    while let Some(arg) = args.next() {
        if arg == "--" {
            parsed.kernel_argv = args.by_ref().collect();
            break;
        }
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
            None => (arg.clone(), None),
        };
        let name = name
            .strip_prefix("--RemoteProcessProxy.")
            .map(|n| format!("--{n}"))
            .unwrap_or(name);
        let mut spark_mode = None;
        let slot = match name.as_str() {
            "--kernel-id" => Some(&mut parsed.kernel_id),
            "--response-address" => Some(&mut parsed.response_address),
            "--public-key" => Some(&mut parsed.public_key),
            "--port-range" => Some(&mut parsed.port_range),
            "--transport-encryption" => Some(&mut parsed.transport_encryption),
            "--spark-context-initialization-mode" => Some(spark_mode.insert(String::new())),
            "--cluster-type" | "--kernel-class-name" => None,
            _ => return Err(format!("unknown argument '{arg}'")),
        };
        let value = match inline {
            Some(value) => value,
            None if args.peek().is_some_and(|next| next != "--") => args.next().unwrap_or_default(),
            None => String::new(),
        };
        if let Some(slot) = slot {
            *slot = value;
        }
        if let Some(mode) = spark_mode {
            parsed.spark_init = SparkInit::parse(&mode)?;
        }
    }
    let fallback = |value: &mut String, names: &[&str]| {
        if value.is_empty() {
            *value = names.iter().find_map(|n| env(n)).unwrap_or_default();
        }
    };
    fallback(&mut parsed.kernel_id, &["KERNEL_ID"]);
    fallback(
        &mut parsed.response_address,
        &["RESPONSE_ADDRESS", "EG_RESPONSE_ADDRESS"],
    );
    fallback(&mut parsed.public_key, &["PUBLIC_KEY", "EG_PUBLIC_KEY"]);
    fallback(&mut parsed.port_range, &["PORT_RANGE", "EG_PORT_RANGE"]);
    let safe_id = !parsed.kernel_id.is_empty()
        && parsed
            .kernel_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !safe_id {
        return Err("a kernel id (--kernel-id) of letters, digits, '-' and '_' is required".into());
    }
    if parsed.response_address.is_empty() || parsed.public_key.is_empty() {
        return Err("--response-address and --public-key are required".into());
    }
    if parsed.kernel_argv.is_empty() {
        return Err("the kernel's argv must follow '--'".into());
    }
    Ok(parsed)
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1), |name| std::env::var(name).ok()) {
        Ok(args) => args,
        Err(err) => {
            log!("{err}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            log!("cannot start: {err}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(run(args))
}

/// Files to remove at exit.
struct Workdir(PathBuf);

impl Drop for Workdir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn run(args: Args) -> ExitCode {
    let own_signals = catch_signals();
    match args
        .transport_encryption
        .trim()
        .to_ascii_lowercase()
        .as_str()
    {
        "required" => {
            log!(
                "transport encryption 'required' cannot be honoured: this launcher does not provision CurveZMQ keys"
            );
            return ExitCode::from(1);
        }
        "auto" => log!("transport encryption 'auto': continuing without CurveZMQ"),
        _ => {}
    }
    let range = if args.port_range.trim().is_empty() {
        PortRange::ANY
    } else {
        match PortRange::parse(&args.port_range) {
            Ok(range) => range,
            Err(err) => {
                log!("{err}");
                return ExitCode::from(1);
            }
        }
    };
    let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let prepared = range.allocate("0.0.0.0", 5).and_then(|ports| {
        let comm = range.bind_listener(any)?;
        comm.set_nonblocking(true)?;
        Ok((ports, TcpListener::from_std(comm)?))
    });
    let (ports, comm) = match prepared {
        Ok((ports, comm)) if ports.len() == 5 => (ports, comm),
        Ok(_) => {
            log!("could not choose five ports");
            return ExitCode::from(1);
        }
        Err(err) => {
            log!("cannot choose ports: {err}");
            return ExitCode::from(1);
        }
    };
    let comm_port = comm.local_addr().map(|a| a.port()).unwrap_or(0);

    let dir = std::env::temp_dir().join(format!(
        "kernel-launcher-{}-{}",
        args.kernel_id,
        uuid::Uuid::new_v4().simple()
    ));
    if let Err(err) = std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        log!("cannot create {}: {err}", dir.display());
        return ExitCode::from(1);
    }
    let workdir = Workdir(dir);
    let connection_file = workdir.0.join(format!("kernel-{}.json", args.kernel_id));
    let connection = ConnectionInfo {
        transport: Transport::Tcp,
        ip: "0.0.0.0".to_owned(),
        shell_port: ports[0],
        iopub_port: ports[1],
        stdin_port: ports[2],
        control_port: ports[3],
        hb_port: ports[4],
        key: uuid::Uuid::new_v4().to_string(),
        signature_scheme: "hmac-sha256".to_owned(),
        kernel_name: String::new(),
    };
    if let Err(err) = connection.write(&connection_file) {
        log!("{err}");
        return ExitCode::from(1);
    }

    // `{agent_connection_file}` is the same file under a name Enterprise Gateway does not know:
    // EG (jupyter_client) fills `{connection_file}` with its own file before the agent runs.
    let connection_path = connection_file.to_string_lossy().into_owned();
    let vars = BTreeMap::from([
        ("agent_connection_file", connection_path.clone()),
        ("connection_file", connection_path),
        ("kernel_id", args.kernel_id.clone()),
    ]);
    let argv = template::substitute(&args.kernel_argv, &vars);
    let r_profile = std::env::var_os("R_PROFILE_USER");
    let launch = match spark::apply(
        args.spark_init,
        argv,
        &args.kernel_id,
        &workdir.0,
        r_profile,
    ) {
        Ok(launch) => launch,
        Err(err) => {
            log!("{err}");
            return ExitCode::from(2);
        }
    };
    let Some((program, rest)) = launch.argv.split_first() else {
        return ExitCode::from(2);
    };
    // What runs, with what the Spark mode added (a Toree kernel's mode argument, for one).
    log!("starting the kernel: {}", launch.argv.join(" "));
    let mut child = match tokio::process::Command::new(program)
        .args(rest)
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .process_group(0)
        .kill_on_drop(false)
        .spawn()
    {
        Ok(child) => child,
        Err(err) => {
            // The reason a kernel never answered, with where: the gateway shows this line.
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            log!(
                "cannot start the kernel: '{program}' on host {}: {err}",
                host.trim()
            );
            return ExitCode::from(1);
        }
    };
    let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) else {
        log!("the kernel started without a process id");
        return ExitCode::from(1);
    };
    let group = Pid::from_raw(pid);
    log!(
        "kernel {} started: pid {pid}, communication port {comm_port}",
        args.kernel_id
    );

    let mut response = match serde_json::to_value(&connection) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    response.insert("pid".into(), pid.into());
    response.insert("pgid".into(), pid.into());
    response.insert("comm_port".into(), comm_port.into());
    response.insert("kernel_id".into(), args.kernel_id.clone().into());
    let body = serde_json::Value::Object(response).to_string();
    if let Err(err) = send_response(&args.response_address, &args.public_key, &body).await {
        log!(
            "cannot send the connection info to {}: {err}",
            args.response_address
        );
        let _ = killpg(group, Signal::SIGKILL);
        let _ = child.wait().await;
        return ExitCode::from(1);
    }

    let status = serve(comm, &mut child, group, own_signals).await;
    let _ = killpg(group, Signal::SIGKILL);
    drop(workdir);
    log!("kernel {} ended: {status}", args.kernel_id);
    match status.code() {
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::from(u8::try_from(128 + status.signal().unwrap_or(0)).unwrap_or(1)),
    }
}

async fn send_response(address: &str, public_key: &str, body: &str) -> Result<(), String> {
    let wire = payload::encrypt_v1(public_key, body.as_bytes()).map_err(|e| e.to_string())?;
    let send = async {
        let mut stream = TcpStream::connect(address).await?;
        stream.write_all(&wire).await?;
        stream.shutdown().await
    };
    match tokio::time::timeout(RESPONSE_TIMEOUT, send).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no connection within {RESPONSE_TIMEOUT:?}")),
    }
}

/// Catches the signals the agent passes on to the kernel (installed before the kernel starts, so
/// none is lost in between).
fn catch_signals() -> mpsc::Receiver<i32> {
    let mut forwarded = Vec::new();
    for kind in [
        SignalKind::terminate(),
        SignalKind::interrupt(),
        SignalKind::hangup(),
        SignalKind::user_defined1(),
        SignalKind::user_defined2(),
        SignalKind::quit(),
    ] {
        if let Ok(stream) = signal(kind) {
            forwarded.push((kind, stream));
        }
    }
    let (sig_tx, own_signals) = mpsc::channel::<i32>(16);
    for (kind, mut stream) in forwarded {
        let sig_tx = sig_tx.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if sig_tx.send(kind.as_raw_value()).await.is_err() {
                    return;
                }
            }
        });
    }
    own_signals
}

/// Serves the communication port and passes signals on until the kernel exits.
async fn serve(
    comm: TcpListener,
    child: &mut tokio::process::Child,
    group: Pid,
    mut own_signals: mpsc::Receiver<i32>,
) -> std::process::ExitStatus {
    let (tx, mut requests) = mpsc::channel::<CommRequest>(16);
    let mut comm = Some(comm);
    let mut kill_at: Option<tokio::time::Instant> = None;
    loop {
        let accept = async {
            match &comm {
                Some(listener) => listener.accept().await.ok(),
                None => std::future::pending().await,
            }
        };
        let deadline = async {
            match kill_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            status = child.wait() => {
                return match status {
                    Ok(status) => status,
                    Err(_) => std::process::ExitStatus::from_raw(1 << 8),
                };
            }
            Some((stream, _)) = accept => {
                let tx = tx.clone();
                tokio::spawn(async move {
                    if let Some(request) = read_request(stream).await {
                        let _ = tx.send(request).await;
                    }
                });
            }
            Some(request) = requests.recv() => {
                if let Some(signum) = request.signum.filter(|n| *n != 0) {
                    send_signal(group, signum);
                }
                if request.shutdown {
                    // EG sends this right after `shutdown_request`: the kernel is on its way out,
                    // so it gets the grace period to finish before it is killed.
                    log!("shutdown requested: closing the communication port; the kernel has {} s to exit", STOP_GRACE.as_secs());
                    comm = None;
                    kill_at.get_or_insert_with(|| tokio::time::Instant::now() + STOP_GRACE);
                }
            }
            Some(signum) = own_signals.recv() => {
                send_signal(group, signum);
                if signum == Signal::SIGTERM as i32 || signum == Signal::SIGHUP as i32 {
                    kill_at.get_or_insert_with(|| tokio::time::Instant::now() + STOP_GRACE);
                }
            }
            () = deadline => {
                log!("the kernel did not stop in time: killing it");
                let _ = killpg(group, Signal::SIGKILL);
                kill_at = None;
            }
        }
    }
}

fn send_signal(group: Pid, signum: i32) {
    match Signal::try_from(signum) {
        Ok(signal) => {
            if let Err(err) = killpg(group, signal) {
                log!("cannot send {signal} to the kernel: {err}");
            } else if signal != Signal::SIGINT {
                log!("sent {signal} to the kernel");
            }
        }
        Err(_) => log!("ignoring unknown signal number {signum}"),
    }
}

async fn read_request(mut stream: TcpStream) -> Option<CommRequest> {
    let mut data = Vec::new();
    let read = tokio::time::timeout(
        REQUEST_TIMEOUT,
        (&mut stream).take(REQUEST_LIMIT).read_to_end(&mut data),
    )
    .await;
    match read {
        Ok(Ok(_)) => {}
        _ => return None,
    }
    let request = CommRequest::parse(&data);
    if request.is_none() && !data.is_empty() {
        log!("ignoring a malformed request on the communication port");
    }
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn eg_and_provisioner_arguments() {
        let no_env = |_: &str| None;
        let eg = parse_args(
            args(&[
                "--RemoteProcessProxy.kernel-id",
                "k-1",
                "--RemoteProcessProxy.response-address",
                "127.0.0.1:8877",
                "--RemoteProcessProxy.public-key",
                "PK",
                "--RemoteProcessProxy.port-range",
                "0..0",
                "--RemoteProcessProxy.spark-context-initialization-mode",
                "none",
                "--cluster-type=none",
                "--",
                "python",
                "-f",
                "{connection_file}",
            ]),
            no_env,
        );
        let eg = eg.map_err(|e| e.to_string());
        assert!(eg.is_ok(), "{eg:?}");
        if let Ok(eg) = eg {
            assert_eq!(eg.kernel_id, "k-1");
            assert_eq!(eg.response_address, "127.0.0.1:8877");
            assert_eq!(eg.kernel_argv, args(&["python", "-f", "{connection_file}"]));
        }
        let gp = parse_args(
            args(&[
                "--kernel-id",
                "k-2",
                "--port-range",
                "0..0",
                "--response-address",
                "h:1",
                "--public-key",
                "PK",
                "--transport-encryption",
                "",
                "--",
                "bash",
            ]),
            no_env,
        );
        assert_eq!(
            gp.map(|a| (a.kernel_id, a.transport_encryption)).ok(),
            Some(("k-2".into(), String::new()))
        );
        let from_env = parse_args(args(&["--", "k"]), |name| match name {
            "KERNEL_ID" => Some("k-3".into()),
            "EG_RESPONSE_ADDRESS" => Some("h:2".into()),
            "PUBLIC_KEY" => Some("PK".into()),
            _ => None,
        });
        assert_eq!(
            from_env.map(|a| a.response_address).ok(),
            Some("h:2".into())
        );
        for bad in [
            args(&["--bogus", "1", "--", "k"]),
            args(&[
                "--kernel-id",
                "../x",
                "--response-address",
                "h:1",
                "--public-key",
                "P",
                "--",
                "k",
            ]),
            args(&[
                "--kernel-id",
                "k",
                "--response-address",
                "h:1",
                "--public-key",
                "P",
            ]),
            args(&["--kernel-id", "k", "--", "k"]),
        ] {
            assert!(parse_args(bad.clone(), no_env).is_err(), "{bad:?}");
        }
    }
}
