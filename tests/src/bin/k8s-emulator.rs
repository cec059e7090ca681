//! Runs the Kubernetes API-server emulator (`tests::kubernetes::K8sEmulator`) for manual use and
//! for non-Rust clients (kubectl, the Python client, Enterprise Gateway).
//!
//! ```text
//! k8s-emulator [--addr HOST:PORT] [--token TOKEN] [--tls --ca-out FILE] [--image NAME=PROGRAM[,ARG]...]...
//!              [--image-env NAME:KEY=VALUE]... [--namespace NS]... [--exit-on-stdin-eof]
//! ```
//! `--image` defines an image by its entrypoint (comma-separated argv). Prints `URL <url>`, then
//! `READY`, on stdout. Stops (killing every container) on SIGINT or SIGTERM, and with
//! `--exit-on-stdin-eof` when standard input reaches end of file.

use std::io::Read;
use std::net::SocketAddr;

use anyhow::{Context, bail};
use tests::kubernetes::{EmulatorConfig, Image, K8sEmulator};
use tokio::signal::unix::{SignalKind, signal};

struct Options {
    config: EmulatorConfig,
    addr: SocketAddr,
    exit_on_stdin_eof: bool,
    ca_out: Option<std::path::PathBuf>,
}

fn parse(args: impl IntoIterator<Item = String>) -> anyhow::Result<Options> {
    let mut config = EmulatorConfig::default();
    let mut addr = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut exit_on_stdin_eof = false;
    let mut ca_out = None;
    let mut extra_namespaces = Vec::new();
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--addr" => addr = value()?.parse().context("--addr wants HOST:PORT")?,
            "--token" => config.token = Some(value()?),
            "--tls" => config.tls = true,
            "--ca-out" => ca_out = Some(std::path::PathBuf::from(value()?)),
            "--image" => {
                let v = value()?;
                let (name, argv) = v
                    .split_once('=')
                    .context("--image wants NAME=PROGRAM[,ARG]...")?;
                config.images.insert(
                    name.to_owned(),
                    Image {
                        entrypoint: argv.split(',').map(str::to_owned).collect(),
                        ..Image::default()
                    },
                );
            }
            "--image-env" => {
                let v = value()?;
                let (name, kv) = v
                    .split_once(':')
                    .context("--image-env wants NAME:KEY=VALUE")?;
                let (k, val) = kv
                    .split_once('=')
                    .context("--image-env wants NAME:KEY=VALUE")?;
                let image = config
                    .images
                    .get_mut(name)
                    .with_context(|| format!("--image-env: no image {name} (define it first)"))?;
                image.env.insert(k.to_owned(), val.to_owned());
            }
            "--namespace" => extra_namespaces.push(value()?),
            "--exit-on-stdin-eof" => exit_on_stdin_eof = true,
            "-h" | "--help" => {
                println!(
                    "k8s-emulator [--addr HOST:PORT] [--token TOKEN] [--tls --ca-out FILE] [--image NAME=PROGRAM[,ARG]...]... \
                     [--image-env NAME:KEY=VALUE]... [--namespace NS]... [--exit-on-stdin-eof]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    config.namespaces.extend(extra_namespaces);
    Ok(Options {
        config,
        addr,
        exit_on_stdin_eof,
        ca_out,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Options {
        config,
        addr,
        exit_on_stdin_eof,
        ca_out,
    } = parse(std::env::args().skip(1))?;
    let emulator = K8sEmulator::start(config, addr)
        .await
        .context("cannot start the emulator")?;
    if let (Some(path), Some(pem)) = (&ca_out, emulator.ca_pem()) {
        std::fs::write(path, pem).with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!("URL {}", emulator.url());
    println!("READY");
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (eof_tx, eof_rx) = tokio::sync::oneshot::channel::<()>();
    if exit_on_stdin_eof {
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
