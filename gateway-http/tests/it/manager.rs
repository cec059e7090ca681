//! The kernel manager with real ipykernels and the local resource manager.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gateway_http::manager::ManagerError;
use gateway_http::manager::StartRequest;
use gateway_http::{Fault, GatewayConfig, KernelManager};
use jupyter_protocol::content::ExecuteOutcome;
use jupyter_protocol::{ConnectionInfo, KernelClient, SocketOptions};
use resource_managers::Registry;
use resource_managers::local::{LocalConfig, LocalResourceManager};
use serde_json::{Value, json};
use tempfile::TempDir;
use test_support::eventually;
use tokio::time::Instant;

use crate::support;

/// A manager over the virtualenv's `python3` kernelspec plus test kernelspecs, with the local backend.
pub(crate) struct Kernels {
    pub(crate) manager: Arc<KernelManager>,
    pub(crate) runtime_dir: PathBuf,
    _dir: TempDir,
}

impl Kernels {
    pub(crate) fn new(tweak: impl FnOnce(&mut GatewayConfig)) -> anyhow::Result<Kernels> {
        let dir = tempfile::tempdir()?;
        let specs = write_specs(dir.path())?;
        let mut config = support::config(
            vec![support::venv().join("share/jupyter/kernels"), specs],
            dir.path(),
        );
        config.shutdown_wait_time = Duration::from_secs(2);
        tweak(&mut config);
        let runtime_dir = dir.path().join("runtime");
        let log_dir = dir.path().join("logs");
        std::fs::create_dir_all(&runtime_dir)?;
        std::fs::create_dir_all(&log_dir)?;
        let mut registry = Registry::new();
        registry.register(Arc::new(LocalResourceManager::new(LocalConfig {
            runtime_dir: runtime_dir.clone(),
            log_dir,
            ip: "127.0.0.1".to_owned(),
            search_path: vec![support::venv().join("bin")],
        })));
        Ok(Kernels {
            manager: KernelManager::new(Arc::new(config), registry),
            runtime_dir,
            _dir: dir,
        })
    }

    pub(crate) fn connection_file(&self, kernel_id: &str) -> PathBuf {
        self.runtime_dir.join(format!("kernel-{kernel_id}.json"))
    }

    pub(crate) fn connection(&self, kernel_id: &str) -> anyhow::Result<ConnectionInfo> {
        Ok(ConnectionInfo::read(&self.connection_file(kernel_id))?)
    }

    /// Connection files left in the runtime dir.
    fn leftovers(&self) -> anyhow::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.runtime_dir)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }
}

/// Test kernelspecs: `exits` (ends at once with status 3), `sleeps` (never ready), `by-message` (ipykernel interrupted
/// by message) and `restricted` (alice only).
fn write_specs(dir: &Path) -> anyhow::Result<PathBuf> {
    let kernels = dir.join("mgr-kernels");
    let specs = [
        (
            "exits",
            json!({"argv": ["python", "-c", "import sys; sys.exit(3)", "{connection_file}"],
                         "display_name": "Exits", "language": "python"}),
        ),
        (
            "sleeps",
            json!({"argv": ["python", "-c", "import time; time.sleep(30)", "{connection_file}"],
                   "display_name": "Sleeps", "language": "python"}),
        ),
        (
            "by-message",
            json!({"argv": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                   "display_name": "By message", "language": "python", "interrupt_mode": "message"}),
        ),
        (
            "restricted",
            json!({"argv": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                              "display_name": "Restricted", "language": "python",
                              "metadata": {"process_proxy": {"class_name": "local", "config": {"authorized_users": "alice"}}}}),
        ),
    ];
    for (name, spec) in specs {
        std::fs::create_dir_all(kernels.join(name))?;
        std::fs::write(
            kernels.join(name).join("kernel.json"),
            serde_json::to_vec(&spec)?,
        )?;
    }
    Ok(kernels)
}

pub(crate) fn request(name: Option<&str>, env: Option<Value>) -> StartRequest {
    StartRequest {
        name: name.map(str::to_owned),
        env: env.and_then(|e| e.as_object().cloned()),
        ..StartRequest::default()
    }
}

pub(crate) async fn client(info: &ConnectionInfo) -> anyhow::Result<KernelClient> {
    Ok(KernelClient::connect(info, &SocketOptions::default()).await?)
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
        .is_ok()
}

const T: Duration = Duration::from_secs(30);

/// Interrupts until the running request ends: "busy" is published just before the cell runs, so
/// one early interrupt can land before the code does.
async fn interrupt_until_done(
    manager: &KernelManager,
    id: &str,
    mut run: tokio::task::JoinHandle<Result<ExecuteOutcome, jupyter_protocol::Error>>,
) -> anyhow::Result<ExecuteOutcome> {
    for _ in 0..10 {
        manager.interrupt(id).await?;
        if let Ok(done) = tokio::time::timeout(Duration::from_secs(1), &mut run).await {
            return Ok(done??);
        }
    }
    anyhow::bail!("the request was not interrupted")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_interrupt_restart_shutdown() -> anyhow::Result<()> {
    let k = Kernels::new(|_| {})?;
    let started = k.manager.start(request(Some("python"), None)).await?;
    assert_eq!(started.name, "python3");
    assert_eq!(started.username, "tester");
    assert_eq!(k.manager.list().len(), 1);
    let id = started.id.clone();
    let info = k.connection(&id)?;

    let mut c = client(&info).await?;
    let out = c.execute("x = 41\nprint(x + 1)", T).await?;
    assert_eq!(out.stdout, "42\n");

    // Interrupt a long sleep (signal mode).
    let mut sleeper = client(&info).await?;
    let run = tokio::spawn(async move { sleeper.execute("import time; time.sleep(30)", T).await });
    assert!(
        eventually(T, || k
            .manager
            .get(&id)
            .is_ok_and(|s| s.execution_state == "busy"))
        .await
    );
    let interrupted_at = Instant::now();
    let out = interrupt_until_done(&k.manager, &id, run).await?;
    assert!(interrupted_at.elapsed() < Duration::from_secs(10));
    assert_eq!(
        out.error.map(|e| e.ename).as_deref(),
        Some("KeyboardInterrupt")
    );

    // A second kernel with the same id is refused.
    let dup = k
        .manager
        .start(request(None, Some(json!({"KERNEL_ID": id}))))
        .await;
    assert!(matches!(dup, Err(ManagerError::KernelExists(_))), "{dup:?}");

    // Restart: same ports and key, fresh state.
    let restarted = k.manager.restart(&id).await?;
    assert_eq!(restarted.id, id);
    let after = k.connection(&id)?;
    assert_eq!(after, info);
    let mut c = client(&after).await?;
    let out = c.execute("print(x)", T).await?;
    assert_eq!(out.error.map(|e| e.ename).as_deref(), Some("NameError"));
    drop(c);

    k.manager.shutdown(&id).await?;
    assert!(matches!(
        k.manager.get(&id),
        Err(ManagerError::NoSuchKernel(_))
    ));
    assert!(matches!(
        k.manager.shutdown(&id).await,
        Err(ManagerError::NoSuchKernel(_))
    ));
    assert!(!k.connection_file(&id).exists());
    assert!(
        !port_open(info.shell_port) && !port_open(info.hb_port),
        "kernel still listening"
    );
    assert!(k.manager.list().is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_kernels_counts_starts_in_flight() -> anyhow::Result<()> {
    let k = Kernels::new(|c| c.max_kernels = Some(2))?;
    let starts = (0..5).map(|_| k.manager.start(request(None, None)));
    let results = futures_util::future::join_all(starts).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let refused: Vec<String> = results
        .iter()
        .filter_map(|r| match r {
            Err(ManagerError::Forbidden { reason, .. }) => Some(reason.clone()),
            _ => None,
        })
        .collect();
    assert_eq!((ok, refused.len()), (2, 3), "{results:?}");
    for reason in &refused {
        assert!(
            reason.starts_with("A max kernels limit has been set to 2 and there are currently"),
            "{reason}"
        );
    }
    // Shutting one down frees a slot; of two concurrent shutdowns, one wins and one gets 404.
    let first = k.manager.list().remove(0);
    let (a, b) = tokio::join!(k.manager.shutdown(&first.id), k.manager.shutdown(&first.id));
    assert!(a.is_ok() != b.is_ok(), "{a:?} {b:?}");
    assert!(matches!(a.and(b), Err(ManagerError::NoSuchKernel(_))));
    let again = k.manager.start(request(None, None)).await?;
    assert_eq!(k.manager.list().len(), 2);
    k.manager.shutdown_all().await;
    assert!(!k.connection_file(&again.id).exists());
    Ok(())
}

#[tokio::test]
async fn a_kernel_that_exits_at_once_fails_the_start() -> anyhow::Result<()> {
    let k = Kernels::new(|_| {})?;
    let result = k.manager.start(request(Some("exits"), None)).await;
    match result {
        Err(ManagerError::LaunchFailed { reason, fault }) => {
            assert_eq!(fault, Fault::Kernel);
            assert!(reason.contains("exit code 3"), "{reason}");
        }
        other => panic!("expected a launch failure, got {other:?}"),
    }
    assert!(k.manager.list().is_empty());
    assert_eq!(k.leftovers()?, Vec::<String>::new());
    // The failed start released its slot.
    let k2 = Kernels::new(|c| c.max_kernels = Some(1))?;
    for _ in 0..2 {
        let result = k2.manager.start(request(Some("exits"), None)).await;
        assert!(
            matches!(result, Err(ManagerError::LaunchFailed { .. })),
            "{result:?}"
        );
    }
    Ok(())
}

/// What kind of error a start produced, with its text.
fn kind(result: Result<gateway_http::manager::KernelSnapshot, ManagerError>) -> (String, String) {
    match result {
        Ok(snapshot) => ("started".to_owned(), snapshot.id),
        Err(err) => {
            let name = match &err {
                ManagerError::BadRequest { .. } => "BadRequest",
                ManagerError::Forbidden { .. } => "Forbidden",
                ManagerError::NoSuchKernelSpec(_) => "NoSuchKernelSpec",
                ManagerError::KernelExists(_) => "KernelExists",
                ManagerError::LaunchFailed { .. } => "LaunchFailed",
                _ => "other",
            };
            (name.to_owned(), err.to_string())
        }
    }
}

#[tokio::test]
async fn refused_starts_allocate_nothing() -> anyhow::Result<()> {
    let k = Kernels::new(|c| {
        c.allowed_kernelspecs = vec![
            "python3".to_owned(),
            "restricted".to_owned(),
            "exits".to_owned(),
        ];
    })?;
    #[track_caller]
    fn check(got: (String, String), kind: &str, text: &str) {
        assert_eq!(got.0, kind, "{}", got.1);
        assert!(
            got.1.contains(text),
            "{:?} does not contain {text:?}",
            got.1
        );
    }
    let cases: Vec<(Option<&str>, Value, &str, &str)> = vec![
        (
            None,
            json!({"KERNEL_ID": "not-a-uuid"}),
            "BadRequest",
            "KERNEL_ID",
        ),
        (
            None,
            json!({"KERNEL_ID": "6F1B3C1E-2A4D-4F6B-9C1D-2E3F4A5B6C7D"}),
            "BadRequest",
            "KERNEL_ID",
        ),
        (
            None,
            json!({"KERNEL_ID": "6f1b3c1e-2a4d-1f6b-9c1d-2e3f4a5b6c7d"}),
            "BadRequest",
            "KERNEL_ID",
        ),
        (
            None,
            json!({"KERNEL_USERNAME": "$(id)"}),
            "BadRequest",
            "KERNEL_USERNAME",
        ),
        (None, json!({"KERNEL_X": "a\nb"}), "BadRequest", "KERNEL_X"),
        (None, json!({"KERNEL_X": 5}), "BadRequest", "KERNEL_X"),
        (
            None,
            json!({"KERNEL_X": "a".repeat(5000)}),
            "BadRequest",
            "KERNEL_X",
        ),
        (
            None,
            json!({"KERNEL_LAUNCH_TIMEOUT": "soon"}),
            "BadRequest",
            "KERNEL_LAUNCH_TIMEOUT",
        ),
        (
            None,
            json!({"KERNEL_LAUNCH_TIMEOUT": "-1"}),
            "BadRequest",
            "KERNEL_LAUNCH_TIMEOUT",
        ),
        (
            None,
            json!({"KERNEL_USERNAME": "root"}),
            "Forbidden",
            "User 'root' is not authorized to start kernel 'Python 3 (ipykernel)'. Ensure KERNEL_USERNAME is set to an appropriate value and retry the request.",
        ),
        (
            Some("restricted"),
            json!({"KERNEL_USERNAME": "bob"}),
            "Forbidden",
            "User 'bob' is not in the set of users authorized to start kernel 'Restricted'.",
        ),
        (
            Some("nope"),
            json!({}),
            "NoSuchKernelSpec",
            "No such kernel named nope",
        ),
        (Some("echo"), json!({}), "NoSuchKernelSpec", "echo"),
    ];
    for (name, env, want, text) in cases {
        check(
            kind(k.manager.start(request(name, Some(env))).await),
            want,
            text,
        );
    }
    assert!(k.manager.list().is_empty());
    assert_eq!(k.leftovers()?, Vec::<String>::new());

    let limited = Kernels::new(|c| c.max_kernels_per_user = Some(0))?;
    check(
        kind(
            limited
                .manager
                .start(request(None, Some(json!({"KERNEL_USERNAME": "bob"}))))
                .await,
        ),
        "Forbidden",
        "A max kernels per user limit has been set to 0 and user 'bob' currently has 0 active and pending kernels.",
    );
    let limited = Kernels::new(|c| c.max_kernels = Some(0))?;
    check(
        kind(limited.manager.start(request(Some("nope"), None)).await),
        "Forbidden",
        "A max kernels limit has been set to 0 and there are currently 0 active and pending kernels.",
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_kernels_are_culled() -> anyhow::Result<()> {
    let k = Kernels::new(|c| {
        c.culling.idle_timeout = Duration::from_secs(1);
        c.culling.interval = Duration::from_millis(200);
    })?;
    let started = k.manager.start(request(None, None)).await?;
    let started_at = Instant::now();
    assert!(
        eventually(T, || k.manager.get(&started.id).is_err()).await,
        "kernel was not culled"
    );
    assert!(started_at.elapsed() >= Duration::from_secs(1));
    assert!(
        eventually(Duration::from_secs(5), || !k
            .connection_file(&started.id)
            .exists())
        .await
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_kernel_is_restarted_on_the_same_ports() -> anyhow::Result<()> {
    let k = Kernels::new(|_| {})?;
    let started = k.manager.start(request(None, None)).await?;
    let info = k.connection(&started.id)?;
    let mut c = client(&info).await?;
    // The kernel dies before replying; the execute times out.
    let _ = c
        .execute("import os; os._exit(1)", Duration::from_secs(2))
        .await;
    drop(c);
    let mut recovered = false;
    let deadline = Instant::now() + T;
    while Instant::now() < deadline && !recovered {
        if let Ok(mut c) = client(&info).await
            && let Ok(out) = c.execute("print('back')", Duration::from_secs(3)).await
        {
            recovered = out.stdout == "back\n";
        }
    }
    assert!(recovered, "kernel did not come back");
    assert_eq!(k.connection(&started.id)?, info);
    k.manager.shutdown_all().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_limit_zero_never_restarts() -> anyhow::Result<()> {
    let k = Kernels::new(|c| c.restart_limit = 0)?;
    let started = k.manager.start(request(None, None)).await?;
    let info = k.connection(&started.id)?;
    let mut c = client(&info).await?;
    let _ = c
        .execute("import os; os._exit(1)", Duration::from_secs(2))
        .await;
    assert!(
        eventually(T, || k.manager.get(&started.id).is_err()).await,
        "dead kernel still listed"
    );
    assert!(
        eventually(Duration::from_secs(5), || !k
            .connection_file(&started.id)
            .exists())
        .await
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_interrupts_and_concurrent_restarts() -> anyhow::Result<()> {
    let k = Kernels::new(|_| {})?;
    let started = k.manager.start(request(Some("by-message"), None)).await?;
    let id = started.id.clone();
    let info = k.connection(&id)?;
    let mut sleeper = client(&info).await?;
    let run = tokio::spawn(async move { sleeper.execute("import time; time.sleep(30)", T).await });
    assert!(
        eventually(T, || k
            .manager
            .get(&id)
            .is_ok_and(|s| s.execution_state == "busy"))
        .await
    );
    let out = interrupt_until_done(&k.manager, &id, run).await?;
    assert_eq!(
        out.error.map(|e| e.ename).as_deref(),
        Some("KeyboardInterrupt")
    );

    let (a, b) = tokio::join!(k.manager.restart(&id), k.manager.restart(&id));
    assert_eq!(a?.id, id);
    assert_eq!(b?.id, id);
    let mut c = client(&k.connection(&id)?).await?;
    assert_eq!(c.execute("print('ok')", T).await?.stdout, "ok\n");
    drop(c);
    assert!(matches!(
        k.manager
            .restart("6f1b3c1e-2a4d-4f6b-9c1d-2e3f4a5b6c7d")
            .await,
        Err(ManagerError::NoSuchKernel(_))
    ));
    k.manager.shutdown_all().await;
    assert!(k.manager.list().is_empty());
    assert!(!k.connection_file(&id).exists());
    Ok(())
}

#[tokio::test]
async fn a_launch_past_its_timeout_is_torn_down() -> anyhow::Result<()> {
    let k = Kernels::new(|_| {})?;
    let env = json!({"KERNEL_LAUNCH_TIMEOUT": "0.3"});
    // A kernel that never answers (ipykernel itself may well be ready within 0.3 s).
    match k.manager.start(request(Some("sleeps"), Some(env))).await {
        Err(ManagerError::LaunchFailed { reason, .. }) => {
            assert!(reason.contains("within 0.3 s"), "{reason}")
        }
        other => panic!("expected a launch timeout, got {other:?}"),
    }
    assert!(k.manager.list().is_empty());
    assert_eq!(k.leftovers()?, Vec::<String>::new());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernels_can_outlive_the_gateway() -> anyhow::Result<()> {
    let k = Kernels::new(|c| c.shutdown_kernels_on_exit = false)?;
    let started = k.manager.start(request(None, None)).await?;
    let info = k.connection(&started.id)?;
    k.manager.shutdown_all().await;
    assert!(matches!(
        k.manager.start(request(None, None)).await,
        Err(ManagerError::LaunchFailed { .. })
    ));
    // The kernel still runs and answers; stop it ourselves.
    let mut c = client(&info).await?;
    assert_eq!(c.execute("print('alive')", T).await?.stdout, "alive\n");
    c.shutdown(false, T).await?;
    drop(c);
    assert!(
        eventually(T, || !port_open(info.hb_port)).await,
        "kernel did not stop"
    );
    Ok(())
}
