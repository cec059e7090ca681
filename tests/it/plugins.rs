//! External resource-manager plugins through the gateway binary: the Python example plugin
//! (`examples/python-plugin/plugin.py`) runs a real ipykernel end to end, and its hostile modes
//! each fail a start clearly, within the deadline, with the gateway still serving and nothing
//! left running; a plugin's kernel outlives a `kill -9` of its gateway and is re-attached by the
//! next one from the kernel store.
//!
//! The good plugin is configured (`--plugins_file`; its `hello` names the backend
//! `python-plugin`); the hostile ones are named by their kernelspecs (the `external` backend,
//! `config.plugin`). Every plugin and kernel has the test's runtime directory in its argv
//! (`--runtime-dir`, the connection file), so "nothing left behind" is checked by looking for
//! that path in every process's command line.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde_json::json;

use crate::support::{
    Gateway, GatewayConfig, Impl, fixture, http_get, http_request, run_bounded, venv,
    workspace_root,
};

/// The launch deadline the hostile starts ask for (`KERNEL_LAUNCH_TIMEOUT`).
const HOSTILE_DEADLINE: Duration = Duration::from_secs(6);

/// What a test needs: kernelspecs, the plugins file and the plugins' runtime directory.
struct Setup {
    dir: tempfile::TempDir,
    runtime: PathBuf,
    python: PathBuf,
    plugin: PathBuf,
}

impl Setup {
    fn new() -> Result<Setup> {
        let dir = tempfile::Builder::new().prefix("plugins-").tempdir()?;
        let runtime = dir.path().join("runtime");
        Ok(Setup {
            runtime,
            python: venv()?.join("bin/python"),
            plugin: workspace_root().join("examples/python-plugin/plugin.py"),
            dir,
        })
    }

    /// The plugin's argv with `extra` arguments.
    fn argv(&self, extra: &[&str]) -> Vec<String> {
        let mut argv = vec![
            self.python.display().to_string(),
            self.plugin.display().to_string(),
            "--runtime-dir".to_owned(),
            self.runtime.display().to_string(),
        ];
        argv.extend(extra.iter().map(|s| (*s).to_owned()));
        argv
    }

    /// Writes kernelspec `name` (an ipykernel) with `metadata`, under `<dir>/share/kernels`.
    fn kernelspec(&self, name: &str, metadata: serde_json::Value) -> Result<()> {
        let spec = self.share().join("kernels").join(name);
        std::fs::create_dir_all(&spec)?;
        let kernel = json!({
            "argv": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": name,
            "language": "python",
            "metadata": metadata,
        });
        std::fs::write(
            spec.join("kernel.json"),
            serde_json::to_vec_pretty(&kernel)?,
        )?;
        Ok(())
    }

    fn share(&self) -> PathBuf {
        self.dir.path().join("share")
    }

    fn gateway(&self, args: Vec<String>) -> Result<Gateway> {
        let config = GatewayConfig {
            jupyter_path: vec![self.share()],
            args,
            ..GatewayConfig::default()
        };
        Gateway::start(Impl::Ours, &config)
    }

    /// Processes whose command line names the runtime directory (plugins and their kernels).
    fn leftovers(&self) -> Vec<String> {
        processes_mentioning(&self.runtime)
    }

    /// Waits (up to 10 s) until no process names the runtime directory.
    fn nothing_left(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = self.leftovers();
            if left.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("processes left behind: {left:#?}");
            }
            std::thread::park_timeout(Duration::from_millis(200));
        }
    }
}

/// `pid: cmdline` of every process whose command line contains `path`.
fn processes_mentioning(path: &Path) -> Vec<String> {
    let needle = path.display().to_string();
    test_support::procfs::processes()
        .into_iter()
        .filter_map(|p| {
            let cmdline = p.command_line()?;
            cmdline
                .contains(&needle)
                .then(|| format!("{}: {cmdline}", p.pid()))
        })
        .collect()
}

#[test]
fn e2e_python_plugin_runs_ipykernel_through_the_gateway() -> Result<()> {
    let setup = Setup::new()?;
    setup.kernelspec(
        "plugin-python",
        json!({"process_proxy": {"class_name": "python-plugin"}}),
    )?;
    let plugins = setup.dir.path().join("plugins.toml");
    let argv = toml_list(&setup.argv(&[]));
    std::fs::write(&plugins, format!("[[plugins]]\nargv = {argv}\n"))?;
    let mut gateway = setup.gateway(vec![format!("--plugins_file={}", plugins.display())])?;

    // The plugin's hello registered the backend; its kernelspec is listed as available.
    let specs = http_get(gateway.port, "/api/kernelspecs")?.json();
    let listed = &specs["kernelspecs"]["plugin-python"];
    assert!(listed.is_object(), "plugin kernelspec not listed: {specs}");

    let mut driver = Command::new(venv()?.join("bin/python"));
    driver
        .arg(fixture("plugin_driver.py"))
        .arg(gateway.url())
        .arg("plugin-python")
        .env("PYTHONUNBUFFERED", "1");
    let (status, output) = run_bounded(
        "plugin_driver.py",
        driver,
        &setup.dir.path().join("driver.log"),
        Duration::from_secs(150),
    )?;
    println!("{output}");
    assert!(
        status.success() && output.contains("OK: all steps passed"),
        "driver failed ({status}):\n{output}\n--- gateway ---\n{}",
        gateway.proc.log_tail(40)
    );
    setup.nothing_left()?;
    let files: Vec<_> = std::fs::read_dir(&setup.runtime)
        .map(|dir| dir.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(files.is_empty(), "the plugin left files behind: {files:?}");
    gateway.proc.mark_passed();
    Ok(())
}

#[test]
fn e2e_hostile_plugins_fail_the_start_clearly_and_leave_nothing() -> Result<()> {
    let setup = Setup::new()?;
    // Each mode: what the reason must say.
    let modes = [
        ("crash", "exited during launch (exit code 3)"),
        (
            "garbage",
            "answered launch with something that is not a JSON object",
        ),
        ("wrong-id", "answered launch (request id 2) with id 1002"),
        ("silent", "did not answer launch within"),
    ];
    for (mode, _) in modes {
        let name = format!("hostile-{mode}");
        setup.kernelspec(
            &name,
            json!({"process_proxy": {
                "class_name": "external",
                "config": {"plugin": setup.argv(&["--name", &name, "--misbehave", mode])},
            }}),
        )?;
    }
    let mut gateway = setup.gateway(Vec::new())?;

    for (mode, expected) in modes {
        let name = format!("hostile-{mode}");
        let body = json!({
            "name": name,
            "env": {"KERNEL_LAUNCH_TIMEOUT": HOSTILE_DEADLINE.as_secs().to_string()},
        });
        let started = Instant::now();
        let response = http_request(
            gateway.port,
            "POST",
            "/api/kernels",
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
        .with_context(|| format!("starting {name}"))?;
        let took = started.elapsed();
        let reason = response.json()["reason"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        println!("{mode}: {} after {took:.1?}: {reason}", response.status);
        assert_eq!(response.status, 500, "{mode}: {}", response.text());
        assert!(
            reason.contains(&format!("plugin '{name}'")) && reason.contains(expected),
            "{mode}: the reason must name the plugin and say `{expected}`: {reason}"
        );
        assert!(
            took < HOSTILE_DEADLINE + Duration::from_secs(4),
            "{mode}: the start took {took:?}"
        );
        // Still serving, and nothing of the failed start is running.
        let api = http_get(gateway.port, "/api")?;
        assert_eq!(api.status, 200, "{mode}: GET /api after the failure");
        setup
            .nothing_left()
            .with_context(|| format!("after the {mode} plugin"))?;
    }
    let kernels = http_get(gateway.port, "/api/kernels")?.json();
    assert_eq!(kernels, json!([]), "no kernel may be listed");
    let log = gateway.proc.log_text();
    assert!(
        log.contains("stopping a plugin that broke the protocol"),
        "the gateway log should say it stopped the plugins"
    );
    gateway.proc.mark_passed();
    Ok(())
}

/// Runs `persistence_driver.py` with `args` against the gateway at `url`; its output.
fn persistence_driver(setup: &Setup, url: &str, args: &[&str]) -> Result<String> {
    let mut driver = Command::new(&setup.python);
    driver
        .arg(fixture("persistence_driver.py"))
        .arg(args.first().copied().unwrap_or_default())
        .arg(url)
        .arg("")
        .args(args.get(1..).unwrap_or_default())
        .env("PYTHONUNBUFFERED", "1");
    let (status, output) = run_bounded(
        "persistence_driver.py",
        driver,
        &setup.dir.path().join("persistence-driver.log"),
        Duration::from_secs(120),
    )?;
    if !status.success() {
        bail!("persistence_driver.py {args:?} failed ({status}):\n{output}");
    }
    Ok(output)
}

#[test]
fn e2e_plugin_kernel_survives_a_gateway_kill_and_is_reattached() -> Result<()> {
    let setup = Setup::new()?;
    setup.kernelspec(
        "plugin-python",
        json!({"process_proxy": {"class_name": "python-plugin"}}),
    )?;
    let plugins = setup.dir.path().join("plugins.toml");
    let argv = toml_list(&setup.argv(&[]));
    std::fs::write(&plugins, format!("[[plugins]]\nargv = {argv}\n"))?;
    let data = setup.dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    let config = GatewayConfig {
        jupyter_path: vec![setup.share()],
        env: vec![("JUPYTER_DATA_DIR".to_owned(), data.display().to_string())],
        args: vec![
            format!("--plugins_file={}", plugins.display()),
            "--gateway_id=plugin-test".to_owned(),
        ],
    };

    let mut first = Gateway::start(Impl::Ours, &config)?;
    let output = persistence_driver(&setup, &first.url(), &["post", "plugin-python"])?;
    let id = output
        .lines()
        .find_map(|l| l.strip_prefix("STATUS 201 "))
        .with_context(|| format!("the start failed: {output}"))?
        .trim()
        .to_owned();
    persistence_driver(
        &setup,
        &first.url(),
        &["exec", &id, "survivor = 'kept'; print(survivor)", "kept"],
    )?;
    first.proc.signal(nix::sys::signal::Signal::SIGKILL)?;
    first.proc.wait_exit(Duration::from_secs(10));
    first.proc.mark_passed();
    let kernels_alive = || {
        setup
            .leftovers()
            .iter()
            .any(|p| p.contains(&format!("kernel-{id}.json")))
    };
    assert!(kernels_alive(), "the kernel must outlive its gateway");

    let mut second = Gateway::start(Impl::Ours, &config)?;
    let listed = http_get(second.port, "/api/kernels")?.json();
    assert!(
        listed.to_string().contains(&id),
        "the kernel is listed again: {listed}"
    );
    persistence_driver(
        &setup,
        &second.url(),
        &["exec", &id, "print(survivor)", "kept"],
    )?;
    let gone = http_request(
        second.port,
        "DELETE",
        &format!("/api/kernels/{id}"),
        &[],
        b"",
    )?;
    assert_eq!(gone.status, 204, "{}", gone.text());
    setup.nothing_left()?;
    second.proc.mark_passed();
    Ok(())
}

/// `["a", "b"]` as a TOML array of strings.
fn toml_list(items: &[String]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|item| serde_json::Value::String(item.clone()).to_string())
        .collect();
    format!("[{}]", quoted.join(", "))
}
