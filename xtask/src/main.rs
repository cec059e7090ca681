//! Development tasks for the workspace, run as `cargo xtask <task>`.
//!
//! * `setup` — create the project-local Python environments (`.venv` for kernels and Jupyter
//!   Server, `.venv-eg` for Enterprise Gateway 3.3.0 and its own integration tests). Idempotent:
//!   a stamp file holding a hash of the requirements file makes re-runs skip pip.
//! * `ci` — the one test command: `setup`, format check, `resource-managers` without its optional
//!   backends (builds, and pulls neither russh nor reqwest), clippy, build the binaries, nextest,
//!   doc tests, and a quick smoke run of the benchmark harness. Stops at the first failing step and names it.
//! * `fuzz [--seconds N]` — every cargo-fuzz target under `fuzz/`, each for a bounded time.
//! * `bench [args]` — release build, then `gateway-bench` (see `bench/README.md`).
//! * `serve [gateway args...]` — only what serving a Python kernel needs: `.venv` with ipykernel
//!   (`requirements/serve.txt`, its own stamp), the release binary, then the gateway with that
//!   venv's kernelspecs visible. No system packages, no test venvs (see [`serve_plan`]).
//!
//! Dependencies are kept to `std` and `anyhow`; every tool is run with [`std::process::Command`].

use std::ffi::OsString;
use std::fmt::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

mod bench;

const USAGE: &str = "\
usage: cargo xtask <task>

tasks:
  setup                   create/refresh .venv and .venv-eg from requirements/ (idempotent)
  ci                      setup, fmt check, clippy, build, nextest (profile ci), doc tests,
                          bench --quick smoke run
  fuzz [--seconds N]      run every cargo-fuzz target under fuzz/ for N seconds each (default 60)
  bench [args]            build release and run gateway-bench: our gateway beside the direct
                          floor and, with --compare, Enterprise Gateway 3.3.0 (--quick, --help)
  profile-forwarding [args]
                          build release and count the gateway's instructions per forwarded
                          message under callgrind, both directions and framings (--help)
  serve [--] [gateway args]
                          .venv with ipykernel only (requirements/serve.txt; no apt, no test
                          venvs), build release, run target/release/enterprise-gateway with
                          JUPYTER_PATH including .venv/share/jupyter (and .venv/bin on PATH)
";

fn main() {
    if let Err(err) = run() {
        eprintln!("xtask: error: {err:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let mut args = std::env::args_os().skip(1);
    let task = args.next().map(|a| a.to_string_lossy().into_owned());
    let rest: Vec<OsString> = args.collect();
    let root = workspace_root()?;
    match task.as_deref() {
        Some("setup") => {
            no_extra_args("setup", &rest)?;
            setup(&root)
        }
        Some("ci") => {
            no_extra_args("ci", &rest)?;
            ci(&root)
        }
        Some("fuzz") => fuzz(&root, &rest),
        Some("serve") => serve(&root, rest),
        Some("bench") => bench::run(
            &rest
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>(),
        ),
        Some("profile-forwarding") => bench::profile(
            &rest
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>(),
        ),
        Some("help" | "-h" | "--help") => {
            print!("{USAGE}");
            Ok(())
        }
        Some(other) => bail!("unknown task `{other}`\n{USAGE}"),
        None => bail!("no task given\n{USAGE}"),
    }
}

fn no_extra_args(task: &str, rest: &[OsString]) -> Result<()> {
    if rest.is_empty() {
        Ok(())
    } else {
        bail!("`{task}` takes no arguments, got {rest:?}")
    }
}

/// The workspace root: the parent of this crate's manifest directory.
fn workspace_root() -> Result<PathBuf> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest
        .parent()
        .context("xtask manifest directory has no parent")?;
    Ok(root.to_path_buf())
}

// ---------------------------------------------------------------------------------------------
// setup
// ---------------------------------------------------------------------------------------------

/// A project-local virtual environment and the requirements file it is built from.
#[derive(Debug, PartialEq)]
struct Venv {
    /// Directory name under the workspace root.
    dir: &'static str,
    /// Requirements file, relative to the workspace root.
    requirements: &'static str,
    /// What the environment is for (printed).
    purpose: &'static str,
    /// Name of the stamp file inside the venv; one per requirements file, so installing the
    /// serve subset into `.venv` does not make the test requirements look installed (or stale).
    stamp: &'static str,
}

const VENVS: [Venv; 3] = [
    Venv {
        dir: ".venv",
        requirements: "requirements/test.txt",
        purpose: "kernels (ipykernel) and Jupyter Server's gateway client",
        stamp: ".xtask-requirements.stamp",
    },
    Venv {
        dir: ".venv-eg",
        requirements: "requirements/eg-itests.txt",
        purpose: "Enterprise Gateway 3.3.0 and its integration tests",
        stamp: ".xtask-requirements.stamp",
    },
    Venv {
        dir: ".venv-spark3",
        requirements: "requirements/spark3.txt",
        purpose: "Spark 3.5 with Apache Toree for the Python, Scala and R kernels on Spark",
        stamp: ".xtask-requirements.stamp",
    },
];

/// The one environment `serve` needs: `.venv` with ipykernel, nothing for the tests.
const SERVE_VENV: Venv = Venv {
    dir: ".venv",
    requirements: "requirements/serve.txt",
    purpose: "the python3 kernel (ipykernel)",
    stamp: ".xtask-serve.stamp",
};

/// One thing `setup` or `serve` does to the machine, listed before anything runs so the plan
/// can be checked by a test.
#[derive(Debug, PartialEq)]
enum Step {
    /// Install missing Debian packages with apt-get ([`ensure_debian_packages`]).
    DebianPackages,
    /// Create or refresh a project-local venv from its requirements file.
    Venv(&'static Venv),
    /// `cargo build --release --bin enterprise-gateway`.
    BuildRelease,
}

/// What `cargo xtask setup` (and so `ci`) does: Debian packages, then every test venv.
fn setup_plan() -> Vec<Step> {
    std::iter::once(Step::DebianPackages)
        .chain(VENVS.iter().map(Step::Venv))
        .collect()
}

/// What `cargo xtask serve` does before it execs the gateway: `.venv` with ipykernel and the
/// release build. No apt-get, no test venvs.
fn serve_plan() -> Vec<Step> {
    vec![Step::Venv(&SERVE_VENV), Step::BuildRelease]
}

fn setup(root: &Path) -> Result<()> {
    run_plan(root, &setup_plan())
}

/// Runs a plan: apt first, then the venvs side by side (pip is mostly waiting on I/O), then the
/// build.
fn run_plan(root: &Path, plan: &[Step]) -> Result<()> {
    let started = Instant::now();
    if plan.contains(&Step::DebianPackages) {
        ensure_debian_packages()?;
    }
    let venvs: Vec<&Venv> = plan
        .iter()
        .filter_map(|step| match step {
            Step::Venv(venv) => Some(*venv),
            _ => None,
        })
        .collect();
    let python = host_python()?;
    let results: Vec<Result<()>> = std::thread::scope(|scope| {
        let handles: Vec<_> = venvs
            .iter()
            .map(|venv| scope.spawn(|| ensure_venv(root, &python, venv)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("venv setup thread panicked")))
            })
            .collect()
    });
    for result in results {
        result?;
    }
    println!("setup: done in {:.1}s", started.elapsed().as_secs_f64());
    if plan.contains(&Step::BuildRelease) {
        println!("serve: building the release binary");
        run_cmd(cargo(root).args(["build", "--release", "--bin", "enterprise-gateway"]))?;
    }
    Ok(())
}

/// Debian packages the tests need. Installs only what is missing, and only with apt-get as root.
///
/// Python's `venv` support (`python3-venv`, which also brings `ensurepip`) when the host Python
/// cannot create a virtual environment; OpenSSH's server for the SSH backend's test hosts (it
/// brings `ssh-keygen` and `ssh-agent` with openssh-client); a Java runtime for the Spark test
/// (pyspark's master and worker).
fn ensure_debian_packages() -> Result<()> {
    let mut missing: Vec<&str> = Vec::new();
    if !command_succeeds(Command::new("python3").args(["-c", "import venv, ensurepip"])) {
        missing.extend(["python3", "python3-venv"]);
    }
    if !Path::new("/usr/sbin/sshd").exists() || !Path::new("/usr/bin/ssh-keygen").exists() {
        missing.push("openssh-server");
    }
    if !command_succeeds(Command::new("java").arg("-version")) {
        missing.push("default-jre-headless");
    }
    // The operations tests: a real Prometheus scraping the gateway, the admin page in Chromium.
    for (binary, package) in [
        ("/usr/bin/prometheus", "prometheus"),
        ("/usr/bin/chromium", "chromium"),
        ("/usr/bin/chromedriver", "chromium-driver"),
        // The kernel store tests: PostgreSQL started by the harness, HAProxy in front of gateways.
        ("/usr/lib/postgresql/15/bin/postgres", "postgresql"),
        ("/usr/sbin/haproxy", "haproxy"),
        // `cargo xtask profile-forwarding`: instruction counts of the forwarding path.
        ("/usr/bin/valgrind", "valgrind"),
        // The Kubernetes emulator's honesty test runs the real kubectl against it.
        ("/usr/bin/kubectl", "kubernetes-client"),
        // The Docker backends' tests: a real engine started by the harness on a private socket.
        ("/usr/sbin/dockerd", "docker.io"),
        // The Spark-language tests: IRkernel and what gateway_provisioners' R launcher loads.
        ("/usr/bin/Rscript", "r-base-core"),
        ("/usr/lib/R/site-library/IRkernel", "r-cran-irkernel"),
        ("/usr/lib/R/site-library/argparse", "r-cran-argparse"),
        ("/usr/lib/R/site-library/jsonlite", "r-cran-jsonlite"),
        ("/usr/lib/R/site-library/base64enc", "r-cran-base64enc"),
        ("/usr/lib/R/site-library/digest", "r-cran-digest"),
        ("/usr/lib/R/site-library/stringr", "r-cran-stringr"),
        // R's Spark cells and the agent's R lazy/eager modes: pyspark through reticulate.
        ("/usr/lib/R/site-library/reticulate", "r-cran-reticulate"),
    ] {
        if !Path::new(binary).exists() {
            missing.push(package);
        }
    }
    if missing.is_empty() {
        println!("setup: Debian packages: nothing to install");
    } else {
        apt_install(&missing)?;
    }
    remove_system_kernelspecs()
}

/// Debian's `r-cran-irkernel` installs a system-wide kernelspec (`/usr/share/jupyter/kernels/ir`),
/// which every Jupyter program on the machine, this gateway included, then lists. The tests
/// expect a host without system-wide kernelspecs (exact listings, and the warning for a gateway
/// that finds none); the Spark-language tests take IRkernel's kernelspec from the R library
/// (`/usr/lib/R/site-library/IRkernel/kernelspec`) instead. So setup removes that one directory.
fn remove_system_kernelspecs() -> Result<()> {
    let dir = Path::new("/usr/share/jupyter/kernels/ir");
    if dir.join("kernel.json").exists() {
        println!(
            "setup: removing {} (r-cran-irkernel's system-wide kernelspec; the tests need none)",
            dir.display()
        );
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(())
}

/// `apt-get install -y <packages>` (after `apt-get update`), with a clear error when that is not
/// possible on this machine.
fn apt_install(packages: &[&str]) -> Result<()> {
    if !command_succeeds(Command::new("apt-get").arg("--version")) {
        bail!(
            "need Debian packages {packages:?} but apt-get is not available; install them by hand"
        );
    }
    println!("setup: installing Debian packages {packages:?}");
    run_cmd(Command::new("apt-get").arg("update").arg("-q"))?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// The interpreter venvs are created from: `python3` on PATH, reported with its version.
fn host_python() -> Result<String> {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.version.split()[0])"])
        .output()
        .context("running python3 (is Python 3 installed?)")?;
    if !out.status.success() {
        bail!(
            "python3 -c failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    Ok(version)
}

fn ensure_venv(root: &Path, python_version: &str, venv: &Venv) -> Result<()> {
    let dir = root.join(venv.dir);
    let requirements = root.join(venv.requirements);
    let contents = std::fs::read(&requirements)
        .with_context(|| format!("reading {}", requirements.display()))?;
    let wanted = stamp_text(&contents, python_version);
    let stamp = dir.join(venv.stamp);
    let venv_python = dir.join("bin/python");

    let python_works =
        venv_python.exists() && command_succeeds(Command::new(&venv_python).args(["-c", ""]));
    if python_works && std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        println!("setup: {} is up to date ({})", venv.dir, venv.requirements);
        return Ok(());
    }

    let started = Instant::now();
    if !python_works {
        if dir.exists() {
            println!("setup: {} is broken; recreating it", venv.dir);
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        println!(
            "setup: creating {} for {} (python3 -m venv)",
            venv.dir, venv.purpose
        );
        run_cmd(Command::new("python3").arg("-m").arg("venv").arg(&dir)).context(
            "python3 cannot create a virtual environment: install python3-venv (Debian) or run \
             `cargo xtask setup`, which installs it",
        )?;
    }
    println!("setup: installing {} into {}", venv.requirements, venv.dir);
    run_cmd(
        Command::new(&venv_python)
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "-q",
                "-r",
            ])
            .arg(&requirements)
            .env("PIP_NO_INPUT", "1"),
    )?;
    std::fs::write(&stamp, &wanted).with_context(|| format!("writing {}", stamp.display()))?;
    println!(
        "setup: {} ready in {:.1}s",
        venv.dir,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Stamp content: a hash of the requirements file plus the host Python version, so a change to
/// either reinstalls.
fn stamp_text(requirements: &[u8], python_version: &str) -> String {
    format!(
        "requirements-fnv1a64={:016x}\npython={python_version}\n",
        fnv1a64(requirements)
    )
}

/// 64-bit FNV-1a: enough to notice an edited requirements file, with no dependency.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

// ---------------------------------------------------------------------------------------------
// ci
// ---------------------------------------------------------------------------------------------

fn ci(root: &Path) -> Result<()> {
    let mut timings: Vec<(&str, Duration)> = Vec::new();
    let result = ci_steps(root, &mut timings);
    print_timings("ci step", &timings);
    result
}

fn ci_steps(root: &Path, timings: &mut Vec<(&'static str, Duration)>) -> Result<()> {
    step(timings, "setup", || setup(root))?;
    step(timings, "tools", ensure_nextest)?;
    step(timings, "fmt", || {
        run_cmd(cargo(root).args(["fmt", "--all", "--", "--check"]))
    })?;
    step(timings, "features", || minimal_resource_managers(root))?;
    step(timings, "clippy", || {
        run_cmd(cargo(root).args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))
    })?;
    step(timings, "build", || {
        run_cmd(cargo(root).args(["build", "--workspace", "--bins"]))
    })?;
    step(timings, "nextest", || {
        run_cmd(cargo(root).args(["nextest", "run", "--workspace", "--profile", "ci"]))
    })?;
    step(timings, "doctest", || {
        run_cmd(cargo(root).args(["test", "--workspace", "--doc"]))
    })?;
    // A smoke run of every benchmark workload (small sizes, no EG) on the debug binaries built
    // above, so the harness cannot rot; real numbers come from `cargo xtask bench` by hand.
    step(timings, "bench-quick", || {
        let bench = target_dir(root).join("debug/gateway-bench");
        run_cmd(Command::new(bench).arg("--quick").current_dir(root))
    })?;
    Ok(())
}

/// Crates only the optional backends of `resource-managers` may bring in: with its default
/// features off (an embedder who wants local kernels only), none of them may be compiled.
/// A new optional backend adds the crates it alone needs here.
const OPTIONAL_BACKEND_CRATES: [&str; 2] = ["russh", "reqwest"];

/// `resource-managers` without default features builds (all targets) and its dependency tree
/// holds none of [`OPTIONAL_BACKEND_CRATES`].
fn minimal_resource_managers(root: &Path) -> Result<()> {
    let minimal = ["-p", "resource-managers", "--no-default-features"];
    run_cmd(cargo(root).arg("check").args(minimal).arg("--all-targets"))?;
    let mut tree = cargo(root);
    tree.arg("tree")
        .args(minimal)
        .args(["-e", "normal", "--prefix", "none"]);
    let shown = describe(&tree);
    println!("+ {shown}");
    let output = tree
        .output()
        .with_context(|| format!("could not start `{shown}`"))?;
    if !output.status.success() {
        bail!(
            "`{shown}` exited with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let found = optional_crates_in_tree(&String::from_utf8_lossy(&output.stdout));
    if !found.is_empty() {
        bail!(
            "resource-managers without default features still depends on {}",
            found.join(", ")
        );
    }
    Ok(())
}

/// Which of [`OPTIONAL_BACKEND_CRATES`] a `cargo tree --prefix none` listing names.
fn optional_crates_in_tree(tree: &str) -> Vec<&'static str> {
    OPTIONAL_BACKEND_CRATES
        .into_iter()
        .filter(|name| {
            tree.lines()
                .any(|line| line.split_whitespace().next() == Some(*name))
        })
        .collect()
}

/// Runs one named step, records its time, and names it in the error when it fails.
fn step(
    timings: &mut Vec<(&'static str, Duration)>,
    name: &'static str,
    f: impl FnOnce() -> Result<()>,
) -> Result<()> {
    println!("\n==> ci step: {name}");
    let started = Instant::now();
    let result = f();
    timings.push((name, started.elapsed()));
    result.with_context(|| format!("ci step `{name}` failed"))
}

fn print_timings(title: &str, timings: &[(&str, Duration)]) {
    let mut out = format!("\n{title} timings:\n");
    let mut total = Duration::ZERO;
    for (name, took) in timings {
        total += *took;
        let _ = writeln!(out, "  {name:<16} {:>8.1}s", took.as_secs_f64());
    }
    let _ = writeln!(out, "  {:<16} {:>8.1}s", "total", total.as_secs_f64());
    print!("{out}");
}

/// cargo-nextest is on the project's machines; install it from crates.io if it is not.
fn ensure_nextest() -> Result<()> {
    if command_succeeds(Command::new("cargo").args(["nextest", "--version"])) {
        println!("tools: cargo-nextest present");
        return Ok(());
    }
    println!("tools: installing cargo-nextest (cargo install --locked)");
    run_cmd(Command::new("cargo").args(["install", "--locked", "cargo-nextest"]))
}

// ---------------------------------------------------------------------------------------------
// fuzz
// ---------------------------------------------------------------------------------------------

fn fuzz(root: &Path, args: &[OsString]) -> Result<()> {
    let mut seconds: u64 = 60;
    let mut iter = args.iter().map(|a| a.to_string_lossy().into_owned());
    while let Some(arg) = iter.next() {
        let value = match arg.as_str() {
            "--seconds" => iter.next().context("--seconds needs a value")?,
            other => match other.strip_prefix("--seconds=") {
                Some(v) => v.to_owned(),
                None => bail!("unknown fuzz argument `{other}`\n{USAGE}"),
            },
        };
        seconds = value
            .parse()
            .with_context(|| format!("--seconds expects a whole number, got `{value}`"))?;
    }
    let fuzz_dir = root.join("fuzz");
    if !fuzz_dir.join("Cargo.toml").exists() {
        bail!(
            "no fuzz crate at {} (expected fuzz/Cargo.toml)",
            fuzz_dir.display()
        );
    }
    if !command_succeeds(Command::new("cargo").args(["+nightly", "fuzz", "--version"])) {
        println!("fuzz: installing cargo-fuzz (cargo install --locked)");
        run_cmd(Command::new("cargo").args(["install", "--locked", "cargo-fuzz"]))?;
    }
    let listed = Command::new("cargo")
        .args(["+nightly", "fuzz", "list"])
        .current_dir(&fuzz_dir)
        .output()
        .context("running cargo fuzz list")?;
    if !listed.status.success() {
        bail!(
            "cargo fuzz list failed: {}",
            String::from_utf8_lossy(&listed.stderr)
        );
    }
    let targets: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    if targets.is_empty() {
        bail!("cargo fuzz list found no targets in {}", fuzz_dir.display());
    }
    let mut timings: Vec<(&str, Duration)> = Vec::new();
    for target in &targets {
        println!("\n==> fuzz {target} for {seconds}s");
        let started = Instant::now();
        let status = Command::new("cargo")
            .args(["+nightly", "fuzz", "run", target, "--"])
            .arg(format!("-max_total_time={seconds}"))
            .current_dir(&fuzz_dir)
            .status()
            .with_context(|| format!("running cargo fuzz run {target}"))?;
        timings.push((target.as_str(), started.elapsed()));
        if !status.success() {
            print_timings("fuzz target", &timings);
            bail!("fuzz target `{target}` failed ({status}); see fuzz/artifacts/{target}/");
        }
    }
    print_timings("fuzz target", &timings);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// serve
// ---------------------------------------------------------------------------------------------

fn serve(root: &Path, mut args: Vec<OsString>) -> Result<()> {
    // `cargo xtask serve -- --port 9999`: the separator is for us, not the gateway.
    if args.first().is_some_and(|a| a == "--") {
        args.remove(0);
    }
    run_plan(root, &serve_plan())?;
    let target_dir = target_dir(root);
    let binary = target_dir.join("release/enterprise-gateway");
    let kernels = root.join(".venv/share/jupyter");
    let mut jupyter_path = OsString::from(&kernels);
    if let Some(existing) = std::env::var_os("JUPYTER_PATH").filter(|v| !v.is_empty()) {
        jupyter_path.push(":");
        jupyter_path.push(existing);
    }
    // Kernelspec argv say `python`; put the venv first so that resolves to the one with ipykernel.
    let mut path = OsString::from(root.join(".venv/bin"));
    if let Some(existing) = std::env::var_os("PATH") {
        path.push(":");
        path.push(existing);
    }
    println!(
        "serve: exec {} (JUPYTER_PATH={})",
        binary.display(),
        jupyter_path.to_string_lossy()
    );
    let err = Command::new(&binary)
        .args(&args)
        .env("JUPYTER_PATH", jupyter_path)
        .env("PATH", path)
        .exec();
    Err(err).with_context(|| format!("exec {}", binary.display()))
}

/// The cargo target directory: `CARGO_TARGET_DIR` if set, else `<root>/target`.
fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                root.join(dir)
            }
        }
        _ => root.join("target"),
    }
}

// ---------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------

fn cargo(root: &Path) -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root);
    cmd
}

/// Runs a command with inherited stdio; a non-zero exit is an error naming the command.
fn run_cmd(cmd: &mut Command) -> Result<()> {
    let shown = describe(cmd);
    println!("+ {shown}");
    let status: ExitStatus = cmd
        .status()
        .with_context(|| format!("could not start `{shown}`"))?;
    if status.success() {
        Ok(())
    } else {
        bail!("`{shown}` exited with {status}")
    }
}

/// True when the command starts and exits 0; its output is discarded.
fn command_succeeds(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn describe(cmd: &Command) -> String {
    let mut shown = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        shown.push(' ');
        shown.push_str(&arg.to_string_lossy());
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_changes_with_requirements_and_python() {
        let a = stamp_text(b"ipykernel==7.4.0\n", "3.11.7");
        assert_eq!(a, stamp_text(b"ipykernel==7.4.0\n", "3.11.7"));
        assert_ne!(a, stamp_text(b"ipykernel==7.4.1\n", "3.11.7"));
        assert_ne!(a, stamp_text(b"ipykernel==7.4.0\n", "3.12.1"));
    }

    #[test]
    fn serve_installs_only_what_serving_needs() {
        let plan = serve_plan();
        assert!(
            !plan.contains(&Step::DebianPackages),
            "serve must not call apt-get"
        );
        let venvs: Vec<&Venv> = plan
            .iter()
            .filter_map(|s| match s {
                Step::Venv(v) => Some(*v),
                _ => None,
            })
            .collect();
        assert_eq!(
            venvs,
            [&SERVE_VENV],
            "serve builds .venv from serve.txt only"
        );
        assert_eq!(SERVE_VENV.dir, ".venv");
        assert!(
            VENVS
                .iter()
                .all(|v| v.stamp != SERVE_VENV.stamp || v.dir != SERVE_VENV.dir),
            "the serve stamp is separate from the test stamp of .venv"
        );
        assert!(plan.contains(&Step::BuildRelease));
        // `setup` (and so `ci`) still installs everything the tests need.
        assert!(setup_plan().contains(&Step::DebianPackages));
        assert!(!setup_plan().contains(&Step::BuildRelease));
    }

    #[test]
    fn serve_requirements_are_a_pinned_subset_of_the_test_requirements() {
        let root = workspace_root().expect("root");
        let read = |p: &str| std::fs::read_to_string(root.join(p)).expect("requirements");
        let test = read(VENVS[0].requirements);
        let serve = read(SERVE_VENV.requirements);
        let pins: Vec<&str> = serve
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        assert!(
            pins.iter().any(|p| p.starts_with("ipykernel==")),
            "{pins:?}"
        );
        for pin in pins {
            assert!(pin.contains("=="), "{pin} is not pinned");
            // The same pin in both files, so one `.venv` satisfies both stamps.
            assert!(
                test.lines().any(|l| l.trim() == pin),
                "{pin} differs from requirements/test.txt"
            );
        }
    }

    #[test]
    fn optional_backend_crates_are_found_by_name_only() {
        let tree = "resource-managers v0.1.0 (/w/resource-managers)\nrussh v0.65.1\nrusshy v1.0.0\nreqwest-middleware v1.0.0\ntokio v1.54.1\n";
        assert_eq!(optional_crates_in_tree(tree), vec!["russh"]);
        assert!(optional_crates_in_tree("tokio v1.54.1\n").is_empty());
    }

    #[test]
    fn fnv1a64_known_values() {
        // Reference values of the 64-bit FNV-1a function.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
