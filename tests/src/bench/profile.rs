//! `gateway-bench --profile-forwarding`: instructions per forwarded message, counted by callgrind.
//!
//! Our gateway (the release build, which carries line tables) runs under
//! `valgrind --tool=callgrind`; a test kernel and one WebSocket client (legacy framing, then a
//! second gateway for `v1`) drive it. Every workload is run once small to warm up, then the
//! counters are zeroed (`callgrind_control -z`), the workload runs with a fixed count, the
//! gateway is left to go quiet, and the counters are dumped (`callgrind_control -d`). Each dump
//! is summarised with `callgrind_annotate`: instructions per message, and the self cost of every
//! function sorted into the items of issue 19 (zeromq crate, HMAC, JSON, WebSocket framing,
//! allocation and copies, task wake-ups, locks, ...). Instruction counts do not depend on the
//! machine's load, so the numbers repeat from run to run (to within a fraction of a percent).
//!
//! Workloads (per framing):
//! * `request` (client → kernel): `input_reply` messages sent on stdin, which the test kernel
//!   reads and drops, so nothing comes back; the path is the one of a shell request (WebSocket
//!   read, decode, sign, DEALER send).
//! * `iopub` (kernel → client): one `emit N`, i.e. N stream messages on iopub (SUB read, verify,
//!   the supervisor's fan-out, encode, WebSocket write).
//! * `execute`: `execute_request` round trips of an empty cell (one message in, four out:
//!   `execute_input`, busy, idle and the reply).
//! * `display`: one `display_data` of the given size, counted per MB.
//!
//! Output: the callgrind files and annotations under `--profile-dir` (default
//! `target/profile-forwarding`) and a Markdown table on stdout (also written to `--out`'s
//! `<date>-forwarding-profile.md` when files are written).
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use jupyter_protocol::Channel;
use tokio::time::Instant;

use super::client::WsProtocol;
use super::target::{self, Env, Gateway, Session, TargetKind};

/// What one profiling run does.
#[derive(Debug, Clone)]
pub(crate) struct ProfileOptions {
    /// Messages per counted workload (requests, stream messages, round trips).
    pub(crate) messages: usize,
    /// Size of the counted display_data.
    pub(crate) display_bytes: usize,
    /// Where the callgrind files go.
    pub(crate) dir: PathBuf,
    /// The framings to profile.
    pub(crate) framings: Vec<WsProtocol>,
    /// A gateway binary other than the one beside the benchmark (e.g. an earlier build's copy).
    pub(crate) gateway_bin: Option<PathBuf>,
    /// Summarise the dumps already in `dir` (of a run with the same counts) instead of running.
    pub(crate) reuse: bool,
}

/// One dumped window.
#[derive(Debug)]
struct Window {
    framing: WsProtocol,
    workload: &'static str,
    /// What the count is divided by (messages, round trips or MB).
    per: f64,
    unit: &'static str,
    file: PathBuf,
}

/// The items instructions are sorted into, in table order.
const ITEMS: &[&str] = &[
    "zeromq crate",
    "HMAC-SHA256",
    "JSON (serde_json)",
    "WebSocket (tungstenite, axum ws)",
    "allocation (malloc/free)",
    "copies (memcpy/memmove/memset)",
    "bytes crate (refcounts, slicing)",
    "task wake-ups (tokio runtime, channels, futures)",
    "locks (mutexes)",
    "IO (hyper, mio, tokio net/io)",
    "gateway code (jupyter-protocol, gateway-http)",
    "core/std (UTF-8 checks, hashing, iterators)",
    "other",
];

/// The item an instruction belongs to, from the source file it was compiled from (inlined code
/// counts where it came from) and the function it ran in.
fn classify(file: &str, function: &str) -> &'static str {
    let in_file = |s: &str| file.contains(s);
    let named = |s: &str| function.contains(s);
    if named("memcpy") || named("memmove") || named("memset") || named("memcmp") || named("bcmp") {
        "copies (memcpy/memmove/memset)"
    } else if in_file("malloc.c")
        || in_file("arena.c")
        || in_file("/alloc/src/raw_vec")
        || in_file("/alloc/src/alloc.rs")
        || in_file("/std/src/sys/alloc")
        || named("malloc")
        || named("_int_free")
        || named("cfree")
        || named("realloc")
        || named("__rust_alloc")
        || named("__rust_dealloc")
        || named("__rdl_")
    {
        "allocation (malloc/free)"
    } else if in_file("/zeromq-") || in_file("/asynchronous-codec") {
        "zeromq crate"
    } else if in_file("/sha2-")
        || in_file("/hmac-")
        || in_file("/digest-")
        || in_file("/block-buffer")
        || named("sha2::")
    {
        "HMAC-SHA256"
    } else if in_file("/serde_json-") || in_file("/serde_core-") || in_file("/serde-") {
        "JSON (serde_json)"
    } else if in_file("/tungstenite-")
        || in_file("/tokio-tungstenite-")
        || in_file("src/extract/ws")
    {
        "WebSocket (tungstenite, axum ws)"
    } else if in_file("/bytes-") {
        "bytes crate (refcounts, slicing)"
    } else if in_file("parking_lot")
        || in_file("/std/src/sys/sync")
        || in_file("pthread_mutex")
        || named("pthread_mutex")
        || named("futex")
        || in_file("/tokio-1") && in_file("/sync/mutex")
    {
        "locks (mutexes)"
    } else if in_file("/hyper-")
        || in_file("/hyper-util-")
        || in_file("/mio-")
        || in_file("/tokio-1") && (in_file("/src/net/") || in_file("/src/io/"))
        || in_file("sysdeps/unix/sysv/linux")
    {
        "IO (hyper, mio, tokio net/io)"
    } else if in_file("/tokio-1")
        || in_file("/tokio-util-")
        || in_file("/futures-")
        || in_file("/async-trait")
    {
        "task wake-ups (tokio runtime, channels, futures)"
    } else if in_file("jupyter-protocol/src") || in_file("gateway-http/src") {
        "gateway code (jupyter-protocol, gateway-http)"
    } else if in_file("/library/core/") || in_file("/library/std/") || in_file("/library/alloc/") {
        "core/std (UTF-8 checks, hashing, iterators)"
    } else {
        "other"
    }
}

fn framing_key(framing: WsProtocol) -> &'static str {
    match framing {
        WsProtocol::Legacy => "legacy",
        WsProtocol::V1 => "v1",
    }
}

/// Runs every workload on every framing and prints (and returns) the Markdown summary.
pub(crate) async fn run(root: &Path, bin_dir: &Path, options: &ProfileOptions) -> Result<String> {
    for tool in ["valgrind", "callgrind_control", "callgrind_annotate"] {
        // callgrind_annotate prints its version on stderr and exits with 255.
        let found = Command::new(tool).arg("--version").output().is_ok_and(|o| {
            let text = [o.stdout, o.stderr].concat();
            String::from_utf8_lossy(&text).contains("-3.")
        });
        if !found {
            bail!("{tool} is not installed (Debian package valgrind; `cargo xtask setup`)");
        }
    }
    std::fs::create_dir_all(&options.dir)
        .with_context(|| format!("creating {}", options.dir.display()))?;
    let mut windows = Vec::new();
    for &framing in &options.framings {
        if options.reuse {
            windows.extend(existing_dumps(options, framing));
        } else {
            windows.extend(profile_framing(root, bin_dir, options, framing).await?);
        }
    }
    let mut costs = Vec::new();
    for window in &windows {
        costs.push(annotate(&window.file)?);
    }
    Ok(summary(options, &windows, &costs))
}

/// What a workload's count is divided by: (count driven, divisor, unit).
fn units(options: &ProfileOptions, workload: &str) -> (usize, f64, &'static str) {
    match workload {
        "display" => (
            options.display_bytes,
            options.display_bytes as f64 / 1e6,
            "MB",
        ),
        "execute" => (
            options.messages / 4,
            (options.messages / 4) as f64,
            "round trip",
        ),
        _ => (options.messages, options.messages as f64, "message"),
    }
}

const WORKLOADS: [&str; 4] = ["request", "iopub", "execute", "display"];

/// The dumps an earlier run left in `dir` for `framing`.
fn existing_dumps(options: &ProfileOptions, framing: WsProtocol) -> Vec<Window> {
    WORKLOADS
        .iter()
        .enumerate()
        .map(|(i, &workload)| {
            let (_, per, unit) = units(options, workload);
            Window {
                framing,
                workload,
                per,
                unit,
                file: options
                    .dir
                    .join(format!("callgrind.out.{}.{}", framing_key(framing), i + 1)),
            }
        })
        .collect()
}

async fn profile_framing(
    root: &Path,
    bin_dir: &Path,
    options: &ProfileOptions,
    framing: WsProtocol,
) -> Result<Vec<Window>> {
    let mut env = Env::new(root, bin_dir, framing, 4096)?;
    if let Some(bin) = &options.gateway_bin {
        env.gateway_bin.clone_from(bin);
    }
    let out_file = options
        .dir
        .join(format!("callgrind.out.{}", framing_key(framing)));
    // Stale dumps of an earlier run would be mistaken for this run's.
    for entry in std::fs::read_dir(&options.dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&format!("callgrind.out.{}", framing_key(framing))) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    env.gateway_wrapper = vec![
        "valgrind".to_owned(),
        "--tool=callgrind".to_owned(),
        format!("--callgrind-out-file={}", out_file.display()),
    ];
    println!("profile: starting the gateway under callgrind ({framing:?} framing)");
    let gateway = Gateway::start(&env, TargetKind::Ours, false).await?;
    let result = async {
        let session = target::start_session(&env, Some(&gateway), &env.test_kernel.clone()).await?;
        let mut session = session;
        let mut windows = Vec::new();
        let pid = gateway.pid();
        let mut dumps = 0;
        for workload in WORKLOADS {
            // Warm up (first-use allocations, lazily built state), then count.
            drive(&mut session, workload, 50, options.display_bytes / 10).await?;
            wait_quiet(pid).await;
            callgrind_control(&["-z", &pid.to_string()])?;
            let (count, per, unit) = units(options, workload);
            drive(&mut session, workload, count, count).await?;
            wait_quiet(pid).await;
            callgrind_control(&["-d", workload, &pid.to_string()])?;
            dumps += 1;
            let file = PathBuf::from(format!("{}.{dumps}", out_file.display()));
            wait_for_file(&file).await?;
            println!(
                "profile: {framing:?} {workload}: {} written",
                file.display()
            );
            windows.push(Window {
                framing,
                workload,
                per,
                unit,
                file,
            });
        }
        session.close().await?;
        anyhow::Ok(windows)
    }
    .await;
    gateway.stop().await;
    result
}

/// Runs `count` of a workload (`bytes` for display) and waits for everything to arrive.
async fn drive(session: &mut Session, workload: &str, count: usize, bytes: usize) -> Result<()> {
    let timeout = Duration::from_secs(600);
    match workload {
        "request" => {
            let Session::Gateway { ws, .. } = session else {
                bail!("profiling needs a gateway session");
            };
            for _ in 0..count {
                let (_, msg) = ws.request("input_reply", &serde_json::json!({"value": "x"}));
                ws.send(Channel::Stdin, &msg).await?;
            }
        }
        "iopub" => {
            let mut streams = 0usize;
            session
                .execute(&format!("emit {count}"), timeout, &mut |msg_type, _, _| {
                    if msg_type == "stream" {
                        streams += 1;
                    }
                })
                .await?;
            if streams != count {
                bail!("{streams} of {count} stream messages arrived");
            }
        }
        "execute" => {
            for _ in 0..count {
                session.execute("", timeout, &mut |_, _, _| {}).await?;
            }
        }
        "display" => {
            let mut seen = false;
            session
                .execute(
                    &format!("display {bytes}"),
                    timeout,
                    &mut |msg_type, _, _| {
                        seen |= msg_type == "display_data";
                    },
                )
                .await?;
            if !seen {
                bail!("the display_data did not arrive");
            }
        }
        other => bail!("unknown workload {other}"),
    }
    Ok(())
}

/// CPU time (utime + stime, in clock ticks) of a process.
fn cpu_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Waits until the gateway used no CPU for a second (it finished what it was forwarding).
async fn wait_quiet(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = cpu_ticks(pid);
    let mut quiet = 0;
    while quiet < 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = cpu_ticks(pid);
        if now == last {
            quiet += 1;
        } else {
            quiet = 0;
            last = now;
        }
    }
}

fn callgrind_control(args: &[&str]) -> Result<()> {
    let output = Command::new("callgrind_control")
        .args(args)
        .output()
        .context("running callgrind_control")?;
    if !output.status.success() {
        bail!(
            "callgrind_control {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

async fn wait_for_file(file: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if std::fs::metadata(file).is_ok_and(|m| m.len() > 0) {
            // callgrind writes the file in one go; give it a moment to finish.
            tokio::time::sleep(Duration::from_millis(500)).await;
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("callgrind did not write {}", file.display())
}

/// A dump's total instructions and their split over [`ITEMS`] (self cost).
#[derive(Debug, Default)]
struct Costs {
    total: u64,
    items: BTreeMap<&'static str, u64>,
    /// The largest functions by self cost.
    top: Vec<(u64, String)>,
}

/// A dump's self cost per function, read from the callgrind file itself (cost lines belong to
/// the current `fn=`, except the one after a `calls=` line, which is the callee's inclusive
/// cost), sorted into [`ITEMS`]. `callgrind_annotate --inclusive=yes` is saved beside the dump
/// for reading.
fn annotate(file: &Path) -> Result<Costs> {
    let output = Command::new("callgrind_annotate")
        .args(["--inclusive=yes", "--auto=no", "--threshold=99.9"])
        .arg(file)
        .output()
        .context("running callgrind_annotate")?;
    if !output.status.success() {
        bail!(
            "callgrind_annotate {} failed: {}",
            file.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    std::fs::write(
        PathBuf::from(format!("{}.inclusive.txt", file.display())),
        &output.stdout,
    )?;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let mut names: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    let mut self_cost: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    let mut files: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    let mut current = String::new();
    // The function's file (`fl=`) and the file of the cost lines that follow (`fi=`/`fe=`,
    // code inlined from elsewhere).
    let mut fn_file = String::new();
    let mut line_file = String::new();
    let mut after_calls = false;
    let mut file_of = |spec: &str| -> String {
        let spec = spec.trim();
        match spec.strip_prefix('(').and_then(|r| r.split_once(')')) {
            Some((id, rest)) => {
                let rest = rest.trim();
                if rest.is_empty() {
                    files.get(id).cloned().unwrap_or_default()
                } else {
                    files.insert(id.to_owned(), rest.to_owned());
                    rest.to_owned()
                }
            }
            None => spec.to_owned(),
        }
    };
    let mut by_item: BTreeMap<&'static str, u64> = BTreeMap::new();
    // `fn=(12) name` defines id 12; a later `fn=(12)` refers to it (the same for `cfn=`).
    let mut resolve = |spec: &str| -> String {
        let spec = spec.trim();
        match spec.strip_prefix('(').and_then(|r| r.split_once(')')) {
            Some((id, rest)) => {
                let rest = rest.trim();
                if rest.is_empty() {
                    names.get(id).cloned().unwrap_or_else(|| format!("fn#{id}"))
                } else {
                    names.insert(id.to_owned(), rest.to_owned());
                    rest.to_owned()
                }
            }
            None => spec.to_owned(),
        }
    };
    for line in text.lines() {
        if let Some(spec) = line.strip_prefix("fl=") {
            fn_file = file_of(spec);
            line_file.clone_from(&fn_file);
        } else if let Some(spec) = line
            .strip_prefix("fi=")
            .or_else(|| line.strip_prefix("fe="))
        {
            line_file = file_of(spec);
        } else if let Some(spec) = line
            .strip_prefix("cfi=")
            .or_else(|| line.strip_prefix("cfl="))
        {
            file_of(spec);
        } else if let Some(spec) = line.strip_prefix("fn=") {
            current = resolve(spec);
            line_file.clone_from(&fn_file);
            after_calls = false;
        } else if let Some(spec) = line.strip_prefix("cfn=") {
            resolve(spec);
        } else if line.starts_with("calls=") {
            after_calls = true;
        } else if line
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_digit() || b == b'+' || b == b'-' || b == b'*')
        {
            let cost: u64 = line
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            if after_calls {
                after_calls = false;
            } else {
                *self_cost.entry(current.clone()).or_default() += cost;
                *by_item.entry(classify(&line_file, &current)).or_default() += cost;
            }
        }
    }
    let mut costs = Costs {
        items: by_item,
        ..Costs::default()
    };
    for (name, cost) in self_cost {
        costs.total += cost;
        costs.top.push((cost, name));
    }
    costs.top.sort_by_key(|entry| std::cmp::Reverse(entry.0));
    costs.top.truncate(15);
    Ok(costs)
}

fn summary(options: &ProfileOptions, windows: &[Window], costs: &[Costs]) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Instructions (callgrind `Ir`) per forwarded unit, our gateway's whole process, {} messages per workload, display_data of {} MB.\n",
        options.messages,
        options.display_bytes as f64 / 1e6
    );
    let _ = write!(md, "| item |");
    for w in windows {
        let _ = write!(md, " {} {} |", framing_key(w.framing), w.workload);
    }
    let _ = writeln!(md);
    let _ = write!(md, "|---|");
    for _ in windows {
        let _ = write!(md, "---|");
    }
    let _ = writeln!(md);
    let _ = write!(md, "| **total Ir per unit** |");
    for (w, c) in windows.iter().zip(costs) {
        let _ = write!(md, " **{}** / {} |", human(c.total as f64 / w.per), w.unit);
    }
    let _ = writeln!(md);
    for item in ITEMS {
        let _ = write!(md, "| {item} |");
        for (w, c) in windows.iter().zip(costs) {
            let n = c.items.get(item).copied().unwrap_or(0);
            let share = if c.total > 0 {
                100.0 * n as f64 / c.total as f64
            } else {
                0.0
            };
            let _ = write!(md, " {} ({share:.1}%) |", human(n as f64 / w.per));
        }
        let _ = writeln!(md);
    }
    for (w, c) in windows.iter().zip(costs) {
        let _ = writeln!(
            md,
            "\nLargest self costs, {} {} (Ir per {}):\n",
            framing_key(w.framing),
            w.workload,
            w.unit
        );
        for (n, name) in &c.top {
            let _ = writeln!(md, "* {} {}", human(*n as f64 / w.per), short(name));
        }
    }
    md
}

/// `12.3k`, `4.56M`.
fn human(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// A function name without its source path and object.
fn short(name: &str) -> String {
    let no_object = name.split(" [").next().unwrap_or(name);
    let function = match no_object.split_once(':') {
        Some((file, function)) if file.contains('/') || file.contains("???") => function,
        _ => no_object,
    };
    let mut text = function.replace('`', "'");
    if text.len() > 110 {
        let mut end = 110;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    format!("`{text}`")
}
