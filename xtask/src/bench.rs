//! `cargo xtask bench [args]`: our gateway side by side with Enterprise Gateway 3.3.0.
//!
//! Prepares the venvs (`setup`), builds the release binaries the benchmark needs (the gateway,
//! the test kernel and `gateway-bench` itself), and runs `target/release/gateway-bench` with the
//! given arguments (`--quick`, `--compare`, `--repeats N`, ...; `--help` lists them). The heavy
//! lifting (WebSocket clients, process control, statistics) lives in `gateway-bench`, so this
//! task stays on `std` and `anyhow`.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

/// Runs the benchmark with `args` passed through to `gateway-bench`.
pub(crate) fn run(args: &[String]) -> Result<()> {
    let args: Vec<&String> = args.iter().filter(|a| a.as_str() != "--").collect();
    build_and_run(&args)
}

/// `cargo xtask profile-forwarding [args]`: `gateway-bench --profile-forwarding` (callgrind
/// instruction counts per forwarded message; see bench/README.md), after the same setup and build.
pub(crate) fn profile(args: &[String]) -> Result<()> {
    let flag = "--profile-forwarding".to_owned();
    let args: Vec<&String> = std::iter::once(&flag)
        .chain(args.iter().filter(|a| a.as_str() != "--"))
        .collect();
    build_and_run(&args)
}

fn build_and_run(args: &[&String]) -> Result<()> {
    let root = crate::workspace_root()?;
    if args.iter().any(|a| *a == "--help" || *a == "-h") {
        println!("usage: cargo xtask bench [gateway-bench options]\n");
    } else {
        // Kernels come from .venv; --compare also needs EG from .venv-eg. Both are idempotent.
        crate::setup(&root)?;
    }
    println!("bench: building the release binaries");
    crate::run_cmd(crate::cargo(&root).args([
        "build",
        "--release",
        "-p",
        "gateway-bin",
        "-p",
        "tests",
        "--bins",
    ]))?;
    let binary = crate::target_dir(&root).join("release/gateway-bench");
    if !binary.exists() {
        bail!("{} was not built", binary.display());
    }
    let status = Command::new(&binary)
        .args(args)
        .current_dir(&root)
        .status()
        .with_context(|| format!("running {}", binary.display()))?;
    if !status.success() {
        bail!("gateway-bench exited with {status}");
    }
    Ok(())
}
