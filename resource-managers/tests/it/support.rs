//! Shared fixtures: a local backend in a temp dir, kernelspecs, launch requests; the process
//! checks and polling come from `test-support`.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kernel_launcher::{KernelSpec, PortRange};
use resource_managers::local::{LocalConfig, LocalResourceManager};
use resource_managers::{
    KernelProcess, LaunchRequest, LaunchedKernel, ProcessState, ResourceManager,
};
pub(crate) use test_support::workspace_root as workspace;
pub(crate) use test_support::{eventually, group_exists, pid_exists, pid_running};

/// The venv's ipykernel kernelspec (argv[0] is `python`).
pub(crate) fn venv_python3_spec() -> anyhow::Result<KernelSpec> {
    Ok(KernelSpec::load(
        &test_support::venv().join("share/jupyter/kernels/python3"),
    )?)
}

/// A local backend writing into its own temp dir (removed on drop).
pub(crate) struct Fixture {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) backend: LocalResourceManager,
}

impl Fixture {
    pub(crate) fn new() -> anyhow::Result<Fixture> {
        let dir = tempfile::tempdir()?;
        let backend = LocalResourceManager::new(LocalConfig {
            runtime_dir: dir.path().join("runtime"),
            log_dir: dir.path().join("logs"),
            ip: "127.0.0.1".to_owned(),
            search_path: test_support::system_path(),
        });
        Ok(Fixture { dir, backend })
    }

    pub(crate) fn runtime_dir(&self) -> PathBuf {
        self.dir.path().join("runtime")
    }

    pub(crate) fn connection_file(&self, kernel_id: &str) -> PathBuf {
        self.runtime_dir().join(format!("kernel-{kernel_id}.json"))
    }

    pub(crate) fn log_file(&self, kernel_id: &str) -> PathBuf {
        self.dir
            .path()
            .join("logs")
            .join(format!("kernel-{kernel_id}.log"))
    }

    /// Launches a kernelspec `name` with `argv` (written under the fixture's dir) through the
    /// local backend.
    pub(crate) async fn launch(&self, name: &str, argv: &[&str]) -> anyhow::Result<LaunchedKernel> {
        let spec = spec(self.dir.path(), name, argv, &[])?;
        Ok(self.backend.launch(request(spec)).await?)
    }
}

/// An exit with `code`.
pub(crate) fn exited(code: i32) -> ProcessState {
    ProcessState::Exited {
        code: Some(code),
        signal: None,
    }
}

/// An end by signal `signal`.
pub(crate) fn killed(signal: i32) -> ProcessState {
    ProcessState::Exited {
        code: None,
        signal: Some(signal),
    }
}

/// A kernelspec in a fresh directory under `root` with the given argv and env.
pub(crate) fn spec(
    root: &Path,
    name: &str,
    argv: &[&str],
    env: &[(&str, &str)],
) -> anyhow::Result<KernelSpec> {
    let dir = root.join("kernels").join(name);
    std::fs::create_dir_all(&dir)?;
    let json = serde_json::json!({
        "argv": argv,
        "display_name": name,
        "language": "shell",
        "env": env.iter().map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v))).collect::<serde_json::Map<_, _>>(),
    });
    std::fs::write(dir.join("kernel.json"), json.to_string())?;
    Ok(KernelSpec::load(&dir)?)
}

/// A launch request with a minimal environment (no PATH).
pub(crate) fn request(spec: KernelSpec) -> LaunchRequest {
    let kernel_id = uuid::Uuid::new_v4().to_string();
    LaunchRequest {
        env: BTreeMap::from([
            ("KERNEL_ID".to_owned(), kernel_id.clone()),
            ("KERNEL_USERNAME".to_owned(), "tester".to_owned()),
            ("KERNEL_GATEWAY".to_owned(), "1".to_owned()),
        ]),
        kernel_id,
        spec,
        cwd: None,
        port_range: PortRange::ANY,
        timeout: Duration::from_secs(30),
        previous: None,
        username: "tester".to_owned(),
        run_as: None,
        placement: Default::default(),
    }
}

/// `(pid, pgid)` from a local record.
pub(crate) fn pid_pgid(process: &dyn KernelProcess) -> (i32, i32) {
    let record = process.record();
    let get = |k: &str| {
        record
            .process
            .get(k)
            .and_then(|v| v.as_i64())
            .and_then(|v| i32::try_from(v).ok())
            .unwrap_or(0)
    };
    (get("pid"), get("pgid"))
}

/// Waits until the kernel's log contains `needle`.
pub(crate) async fn wait_for_log(
    process: &dyn KernelProcess,
    needle: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    if eventually(timeout, || process.log_tail(200).contains(needle)).await {
        return Ok(());
    }
    anyhow::bail!(
        "log never showed {needle:?}; tail:\n{}",
        process.log_tail(20)
    )
}
