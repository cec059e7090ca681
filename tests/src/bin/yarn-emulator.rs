//! Runs the YARN ResourceManager emulator (`tests::yarn::YarnEmulator`) for manual use and for
//! non-Rust clients.
//!
//! ```text
//! yarn-emulator [--addr HOST:PORT]... [--queue NAME=CAPACITY]... [--node-label LABEL]...
//!               [--no-anonymous] [--acl] [--refresh-standby] [--exit-on-stdin-eof]
//! ```
//! Each `--addr` starts one RM of an HA set (the first is active; default `127.0.0.1:0`).
//! Prints `RM <index> <url>` per RM, then `READY`, on stdout. Stops (killing every AM process)
//! on SIGINT or SIGTERM, and with `--exit-on-stdin-eof` also when its standard input reaches end
//! of file (so a parent that dies takes the emulator and its AM processes with it).

use std::net::SocketAddr;

use anyhow::{Context, bail};
use std::io::Read;
use tests::yarn::{EmulatorConfig, QueueSpec, StandbyStyle, YarnEmulator};
use tokio::signal::unix::{SignalKind, signal};

struct Options {
    config: EmulatorConfig,
    addrs: Vec<SocketAddr>,
    exit_on_stdin_eof: bool,
}

fn parse(args: impl IntoIterator<Item = String>) -> anyhow::Result<Options> {
    let mut config = EmulatorConfig::default();
    let mut exit_on_stdin_eof = false;
    let mut addrs = Vec::new();
    let mut queues = Vec::new();
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--addr" => addrs.push(value()?.parse().context("--addr wants HOST:PORT")?),
            "--queue" => {
                let v = value()?;
                let (name, cap) = v.split_once('=').context("--queue wants NAME=CAPACITY")?;
                queues.push(QueueSpec {
                    name: name.to_owned(),
                    capacity: cap.parse().context("capacity")?,
                });
            }
            "--node-label" => config.node_labels.push(value()?),
            "--no-anonymous" => config.anonymous_allowed = false,
            "--acl" => config.acl_enabled = true,
            "--refresh-standby" => config.standby_style = StandbyStyle::Refresh200,
            "--exit-on-stdin-eof" => exit_on_stdin_eof = true,
            "-h" | "--help" => {
                println!(
                    "yarn-emulator [--addr HOST:PORT]... [--queue NAME=CAPACITY]... \
                     [--node-label LABEL]... [--no-anonymous] [--acl] [--refresh-standby] \
                     [--exit-on-stdin-eof]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    if !queues.is_empty() {
        config.queues = queues;
    }
    if addrs.is_empty() {
        addrs.push(SocketAddr::from(([127, 0, 0, 1], 0)));
    }
    Ok(Options {
        config,
        addrs,
        exit_on_stdin_eof,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Options {
        config,
        addrs,
        exit_on_stdin_eof,
    } = parse(std::env::args().skip(1))?;
    let emulator = YarnEmulator::start_with(config, &addrs)
        .await
        .context("cannot start the emulator")?;
    for i in 0..addrs.len() {
        println!("RM {i} {}", emulator.rm_url(i).unwrap_or_default());
    }
    println!("READY");
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (eof_tx, eof_rx) = tokio::sync::oneshot::channel::<()>();
    if exit_on_stdin_eof {
        // Blocking reads on a plain thread: tokio's stdin support is not enabled here.
        std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            let mut stdin = std::io::stdin();
            while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
            let _ = eof_tx.send(());
        });
    }
    let stdin_closed = async {
        if eof_rx.await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        () = stdin_closed => {}
    }
    emulator.stop().await;
    Ok(())
}
