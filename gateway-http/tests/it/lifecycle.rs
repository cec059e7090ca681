//! Kernel lifecycle and policy end to end: restarts and their limit, culling, limits, launch
//! deadlines, reconnect buffering, impersonation and gateway exit, mostly with the workspace's
//! `test-kernel` (build it first: `cargo build -p tests --bin test-kernel`), plus the pure rules.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use futures_util::{SinkExt, StreamExt};
use gateway_http::config::Culling;
use gateway_http::manager::rules::{
    CullReason, Liveness, RestartDecision, RestartTracker, STABLE_AFTER, cull_verdict, liveness,
};
use gateway_http::{GatewayConfig, KernelManager};
use http::{Method, StatusCode};
use jupyter_protocol::{ConnectionInfo, KernelClient, SocketOptions};
use resource_managers::local::{LocalConfig, LocalResourceManager};
use resource_managers::{
    Error as RmError, KernelProcess, KernelRecord, LaunchRequest, LaunchedKernel, ProcessState,
    Registry, ResourceManager,
};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::time::{Instant, sleep, timeout};
use tokio_tungstenite::tungstenite::Message as Frame;

use crate::support;
use crate::ws::{Got, Mode, Ws, connect, execute, expect_msg, next, send_execute, serve};
use test_support::eventually;

const T: Duration = Duration::from_secs(30);

/// The workspace's test kernel, next to this test binary (`target/<profile>/test-kernel`).
fn test_kernel() -> PathBuf {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(|dir| dir.join("test-kernel")));
    let fallback = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/test-kernel");
    let path = beside.filter(|p| p.exists()).unwrap_or(fallback);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build -p tests --bin test-kernel` first",
        path.display()
    );
    path
}

/// A manager and router over test kernelspecs, with the local backend, in a temporary directory.
struct Lab {
    manager: Arc<KernelManager>,
    router: Router,
    runtime_dir: PathBuf,
    dir: TempDir,
    /// Calls of `wait` on the `remote` kernels' processes.
    waits: Arc<AtomicUsize>,
}

/// The local backend under another name. The gateway treats kernels of every backend but
/// `local` as remote; everything else is the real local backend, except that its processes count
/// the calls of `wait` (each call starts a backend's liveness watch anew).
#[derive(Debug)]
struct Elsewhere(LocalResourceManager, Arc<AtomicUsize>);

#[async_trait::async_trait]
impl ResourceManager for Elsewhere {
    fn name(&self) -> &str {
        "elsewhere"
    }
    async fn launch(&self, request: LaunchRequest) -> Result<LaunchedKernel, RmError> {
        let launched = self.0.launch(request).await?;
        Ok(self.counted(launched))
    }
    async fn reattach(&self, record: &KernelRecord) -> Result<LaunchedKernel, RmError> {
        let launched = self.0.reattach(record).await?;
        Ok(self.counted(launched))
    }
}

impl Elsewhere {
    fn counted(&self, launched: LaunchedKernel) -> LaunchedKernel {
        LaunchedKernel {
            connection: launched.connection,
            process: Box::new(Counted(launched.process, Arc::clone(&self.1))),
        }
    }
}

/// A kernel process that counts the calls of its `wait`.
#[derive(Debug)]
struct Counted(Box<dyn KernelProcess>, Arc<AtomicUsize>);

#[async_trait::async_trait]
impl KernelProcess for Counted {
    fn record(&self) -> KernelRecord {
        self.0.record()
    }
    async fn poll(&self) -> ProcessState {
        self.0.poll().await
    }
    async fn wait(&self) -> ProcessState {
        self.1.fetch_add(1, Ordering::SeqCst);
        self.0.wait().await
    }
    async fn signal(&self, signum: i32) -> Result<(), RmError> {
        self.0.signal(signum).await
    }
    async fn interrupt(&self) -> Result<(), RmError> {
        self.0.interrupt().await
    }
    async fn terminate(&self, grace: Duration) -> Result<ProcessState, RmError> {
        self.0.terminate(grace).await
    }
    async fn cleanup(&self, keep_connection_file: bool) {
        self.0.cleanup(keep_connection_file).await;
    }
    async fn shutdown_requested(&self) {
        self.0.shutdown_requested().await;
    }
    fn log_tail(&self, max_lines: usize) -> String {
        self.0.log_tail(max_lines)
    }
    fn detach(&self) {
        self.0.detach();
    }
}

impl Lab {
    fn new(tweak: impl FnOnce(&mut GatewayConfig)) -> anyhow::Result<Lab> {
        let dir = tempfile::tempdir()?;
        let specs = dir.path().join("lc-kernels");
        let python = |code: &str| json!(["python", "-c", code, "{connection_file}"]);
        let list = [
            (
                "tk",
                json!([test_kernel(), "-f", "{connection_file}"]),
                "Test kernel",
            ),
            (
                "quits",
                python(
                    "import sys; print('no GPU available on this node', file=sys.stderr); sys.exit(7)",
                ),
                "Quits",
            ),
            (
                "never",
                python("import time; time.sleep(1000)"),
                "Never ready",
            ),
            (
                "remote",
                json!([test_kernel(), "-f", "{connection_file}"]),
                "Remote test kernel",
            ),
            // Fails its first start as a kernel whose port was taken does, then starts.
            (
                "port_taken_once",
                python(&format!(
                    "import os, sys\n\
                     marker = {marker:?}\n\
                     if not os.path.exists(marker):\n    \
                         open(marker, 'w').close()\n    \
                         print(\"zmq.error.ZMQError: Address already in use (addr='tcp://127.0.0.1:1')\", file=sys.stderr)\n    \
                         sys.exit(1)\n\
                     os.execv({kernel:?}, [{kernel:?}, '-f', sys.argv[1]])\n",
                    marker = dir.path().join("bind-tried").display().to_string(),
                    kernel = test_kernel().display().to_string(),
                )),
                "Port taken once",
            ),
        ];
        for (name, argv, display_name) in list {
            std::fs::create_dir_all(specs.join(name))?;
            let class_name = if name == "remote" {
                "elsewhere"
            } else {
                "local"
            };
            let spec = json!({"argv": argv, "display_name": display_name, "language": "test",
                "metadata": {"process_proxy": {"class_name": class_name}}});
            std::fs::write(
                specs.join(name).join("kernel.json"),
                serde_json::to_vec(&spec)?,
            )?;
        }
        let mut config = support::config(vec![specs], dir.path());
        config.default_kernel_name = "tk".to_owned();
        config.list_kernels = true;
        config.shutdown_wait_time = Duration::from_secs(2);
        tweak(&mut config);
        let runtime_dir = dir.path().join("runtime");
        std::fs::create_dir_all(&runtime_dir)?;
        let local = LocalConfig {
            runtime_dir: runtime_dir.clone(),
            log_dir: dir.path().join("logs"),
            ip: "127.0.0.1".to_owned(),
            search_path: vec![support::venv().join("bin"), PathBuf::from("/usr/bin")],
        };
        let mut registry = Registry::new();
        registry.register(Arc::new(LocalResourceManager::new(local.clone())));
        let waits = Arc::new(AtomicUsize::new(0));
        registry.register(Arc::new(Elsewhere(
            LocalResourceManager::new(local),
            Arc::clone(&waits),
        )));
        let manager = KernelManager::new(Arc::new(config), registry);
        Ok(Lab {
            router: gateway_http::router(Arc::clone(&manager)),
            manager,
            runtime_dir,
            dir,
            waits,
        })
    }

    /// Sends a request through the whole HTTP application: status and JSON body (`Null` when
    /// it is empty or not JSON).
    async fn http(&self, method: Method, uri: &str, body: Value) -> (StatusCode, Value) {
        let mut request = support::Req::new(method, uri);
        if !body.is_null() {
            request = request.body(&body.to_string());
        }
        let reply = support::send(&self.router, request).await;
        (
            reply.status,
            serde_json::from_slice(&reply.body).unwrap_or(Value::Null),
        )
    }

    async fn start(&self, body: Value) -> (StatusCode, Value) {
        self.http(Method::POST, "/api/kernels", body).await
    }

    fn connection(&self, kernel_id: &str) -> anyhow::Result<ConnectionInfo> {
        Ok(ConnectionInfo::read(
            &self.runtime_dir.join(format!("kernel-{kernel_id}.json")),
        )?)
    }

    /// Files left in the runtime directory.
    fn leftovers(&self) -> Vec<String> {
        std::fs::read_dir(&self.runtime_dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Live processes whose command line names a file in this lab's runtime directory (every
    /// kernel gets its connection file as an argument), with their command lines.
    fn processes(&self) -> Vec<(i32, String)> {
        let needle = self.runtime_dir.to_string_lossy().into_owned();
        test_support::procfs::processes()
            .into_iter()
            .filter_map(|p| {
                let cmdline = p.command_line()?;
                (cmdline.contains(&needle) && p.is_running()).then(|| (p.pid(), cmdline))
            })
            .collect()
    }

    /// The pid of the process running kernel `kernel_id`.
    fn pid_of(&self, kernel_id: &str) -> Option<i32> {
        let file = format!("kernel-{kernel_id}.json");
        self.processes()
            .into_iter()
            .find(|(_, cmdline)| cmdline.contains(&file))
            .map(|(pid, _)| pid)
    }
}

fn kill9(pid: i32) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -9 {pid} failed");
    Ok(())
}

fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn ports(info: &ConnectionInfo) -> [u16; 5] {
    [
        info.shell_port,
        info.iopub_port,
        info.stdin_port,
        info.control_port,
        info.hb_port,
    ]
}

/// Waits for the next iopub `status` on `ws`, skipping everything else.
async fn next_status(ws: &mut Ws) -> anyhow::Result<Value> {
    loop {
        let got = expect_msg(ws).await?;
        if got.channel == "iopub" && got.msg_type() == "status" {
            return Ok(got.content);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The pure rules.

#[test]
fn cull_rules() {
    let culling = |busy_timeout: u64, cull_busy: bool, cull_connected: bool| Culling {
        idle_timeout: Duration::from_secs(60),
        interval: Duration::from_secs(10),
        cull_connected,
        cull_busy,
        busy_timeout: Duration::from_secs(busy_timeout),
    };
    let s = Duration::from_secs;
    // (settings, state, idle, connections, verdict)
    let cases = [
        (culling(0, false, false), "idle", s(59), 0, None),
        (
            culling(0, false, false),
            "idle",
            s(61),
            0,
            Some(CullReason::Idle(s(61))),
        ),
        (culling(0, false, false), "idle", s(61), 1, None),
        (
            culling(0, false, true),
            "idle",
            s(61),
            1,
            Some(CullReason::Idle(s(61))),
        ),
        (culling(0, false, false), "busy", s(3600), 0, None),
        (
            culling(0, true, false),
            "busy",
            s(61),
            0,
            Some(CullReason::Busy(s(61))),
        ),
        (culling(600, true, false), "busy", s(61), 0, None),
        (
            culling(600, true, false),
            "busy",
            s(601),
            0,
            Some(CullReason::Busy(s(601))),
        ),
        (
            culling(600, true, false),
            "idle",
            s(61),
            0,
            Some(CullReason::Idle(s(61))),
        ),
        (culling(600, true, false), "busy", s(601), 2, None),
        (
            culling(0, false, false),
            "dead",
            s(0),
            3,
            Some(CullReason::Dead),
        ),
        (
            culling(0, false, false),
            "starting",
            s(61),
            0,
            Some(CullReason::Idle(s(61))),
        ),
    ];
    for (settings, state, idle, connections, want) in cases {
        assert_eq!(
            cull_verdict(&settings, state, idle, connections),
            want,
            "{state} idle {idle:?} connections {connections} busy_timeout {:?}",
            settings.busy_timeout
        );
    }
    // A zero idle timeout disables culling altogether.
    let off = Culling {
        idle_timeout: Duration::ZERO,
        ..culling(600, true, true)
    };
    assert_eq!(cull_verdict(&off, "dead", s(1_000_000), 0), None);
    assert_eq!(
        CullReason::Busy(s(601)).to_string(),
        "culled: busy without any activity for 601 s"
    );
}

#[test]
fn liveness_rules() {
    let exited = ProcessState::Exited {
        code: Some(1),
        signal: None,
    };
    let cases = [
        (true, ProcessState::Running, Liveness::Alive),
        (false, ProcessState::Running, Liveness::Unresponsive),
        (true, exited, Liveness::Dead),
        (false, exited, Liveness::Dead),
        (true, ProcessState::Unknown, Liveness::Alive),
        (false, ProcessState::Unknown, Liveness::Dead),
    ];
    for (answering, state, want) in cases {
        assert_eq!(liveness(answering, state), want, "{answering} {state:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn restart_limit_rules() {
    // Five consecutive failures are restarted, the sixth is not.
    let mut tracker = RestartTracker::new(5);
    let quick = Some(Duration::from_millis(100));
    for attempt in 1..=5 {
        assert_eq!(tracker.exited(quick), RestartDecision::Restart { attempt });
    }
    assert_eq!(
        tracker.exited(quick),
        RestartDecision::LimitReached { limit: 5 }
    );
    // A failed relaunch counts; a kernel that stayed up long enough starts a new series.
    let mut tracker = RestartTracker::new(2);
    assert_eq!(
        tracker.exited(None),
        RestartDecision::Restart { attempt: 1 }
    );
    assert_eq!(
        tracker.relaunch_failed(),
        RestartDecision::Restart { attempt: 2 }
    );
    let ready_at = Instant::now();
    tokio::time::advance(STABLE_AFTER).await;
    assert_eq!(
        tracker.exited(Some(ready_at.elapsed())),
        RestartDecision::Restart { attempt: 1 }
    );
    assert_eq!(tracker.attempts(), 1);
    // Zero disables automatic restarts (EG#854).
    let mut never = RestartTracker::new(0);
    assert_eq!(never.exited(None), RestartDecision::Disabled);
    assert_eq!(
        never.exited(Some(STABLE_AFTER * 2)),
        RestartDecision::Disabled
    );
}

// ---------------------------------------------------------------------------------------------
// Restarts.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_execution_restarts_until_the_limit() -> anyhow::Result<()> {
    // EG's default limit: five consecutive automatic restarts.
    let lab = Lab::new(|c| assert_eq!(c.restart_limit, 5))?;
    let server = serve(Arc::clone(&lab.manager)).await?;
    let (status, model) = lab.start(json!({"name": "tk"})).await;
    assert_eq!(status, StatusCode::CREATED, "{model}");
    let id = model["id"].as_str().unwrap_or_default().to_owned();
    let info = lab.connection(&id)?;
    let mut ws = connect(&server, &id, Some("k9"), Mode::Legacy).await?;

    for round in 1..=6 {
        // Kill the kernel in the middle of a cell.
        let cell = send_execute(&mut ws, Mode::Legacy, "sleep 30").await?;
        loop {
            let got = expect_msg(&mut ws).await?;
            if got.parent_id() == cell && got.msg_type() == "execute_input" {
                break;
            }
        }
        let pid = lab
            .pid_of(&id)
            .ok_or_else(|| anyhow::anyhow!("no kernel process"))?;
        kill9(pid)?;
        let status = next_status(&mut ws).await?;
        if round <= 5 {
            assert_eq!(status["execution_state"], "restarting", "round {round}");
            // The restarted kernel (same ports and key) answers on the same WebSocket.
            assert_eq!(execute(&mut ws, Mode::Legacy, "echo back").await?, "back\n");
            assert_eq!(lab.connection(&id)?, info);
            assert!(lab.pid_of(&id).is_some_and(|new| new != pid));
        } else {
            // The sixth consecutive death exceeds the limit of 5: dead, gone, cleaned up.
            assert_eq!(status["execution_state"], "dead", "{status}");
            assert!(
                status["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("restart limit of 5")),
                "{status}"
            );
            let closed = loop {
                match next(&mut ws).await? {
                    Ok(_) => continue,
                    Err(code) => break code,
                }
            };
            assert!(closed.is_some());
        }
    }
    let (status, _) = lab
        .http(Method::GET, &format!("/api/kernels/{id}"), Value::Null)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        eventually(T, || lab.processes().is_empty()).await,
        "{:?}",
        lab.processes()
    );
    assert_eq!(lab.leftovers(), Vec::<String>::new());
    assert!(ports(&info).iter().all(|p| port_free(*p)));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_of_a_dead_incarnation_comes_after_its_restarting() -> anyhow::Result<()> {
    let lab = Lab::new(|_| {})?;
    let server = serve(Arc::clone(&lab.manager)).await?;
    let (status, model) = lab.start(json!({"name": "tk"})).await;
    assert_eq!(status, StatusCode::CREATED, "{model}");
    let id = model["id"].as_str().unwrap_or_default().to_owned();
    let mut ws = connect(&server, &id, Some("order"), Mode::Legacy).await?;
    // The kernel publishes a run of lines and exits at once, with lines still on their way to
    // the gateway: those that arrive go out in order, then `restarting`, then nothing of them.
    let cell = send_execute(&mut ws, Mode::Legacy, "emit 500\nexit 3").await?;
    let mut lines = 0usize;
    loop {
        let got = expect_msg(&mut ws).await?;
        if got.channel != "iopub" {
            continue;
        }
        if got.msg_type() == "status" && got.content["execution_state"] == "restarting" {
            break;
        }
        if got.msg_type() == "stream" {
            assert_eq!(got.parent_id(), cell);
            assert_eq!(got.content["text"], format!("line {lines}\n"));
            lines += 1;
        }
    }
    // The new incarnation answers; nothing the old one published comes in between.
    let next_cell = send_execute(&mut ws, Mode::Legacy, "echo back").await?;
    // Its stream (iopub) and its reply (shell) may come in either order.
    let (mut echoed, mut replied) = (false, false);
    while !(echoed && replied) {
        let got = expect_msg(&mut ws).await?;
        assert_ne!(
            got.parent_id(),
            cell,
            "{} of the dead incarnation after `restarting` ({lines} lines before it)",
            got.msg_type()
        );
        if got.parent_id() == next_cell && got.msg_type() == "stream" {
            assert_eq!(got.content["text"], "back\n");
            echoed = true;
        }
        if got.parent_id() == next_cell && got.msg_type() == "execute_reply" {
            replied = true;
        }
    }
    ws.close(None).await?;
    drop(ws);
    let (status, _) = lab
        .http(Method::DELETE, &format!("/api/kernels/{id}"), Value::Null)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(eventually(T, || lab.processes().is_empty()).await);
    assert_eq!(lab.leftovers(), Vec::<String>::new());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_kernel_is_restarted_only_for_its_clients() -> anyhow::Result<()> {
    let lab = Lab::new(|_| {})?;
    let server = serve(Arc::clone(&lab.manager)).await?;
    // With a client connected, a dead remote kernel is restarted like a local one.
    let (status, model) = lab.start(json!({"name": "remote"})).await;
    assert_eq!(status, StatusCode::CREATED, "{model}");
    let id = model["id"].as_str().unwrap_or_default().to_owned();
    let mut ws = connect(&server, &id, None, Mode::Legacy).await?;
    assert_eq!(execute(&mut ws, Mode::Legacy, "echo hi").await?, "hi\n");
    kill9(
        lab.pid_of(&id)
            .ok_or_else(|| anyhow::anyhow!("no kernel process"))?,
    )?;
    assert_eq!(next_status(&mut ws).await?["execution_state"], "restarting");
    assert_eq!(execute(&mut ws, Mode::Legacy, "echo back").await?, "back\n");
    ws.close(None).await?;
    drop(ws);
    assert!(eventually(T, || lab.manager.get(&id).is_ok_and(|s| s.connections == 0)).await);
    // Without clients it is shut down instead (EG: "will not be automatically restarted since
    // there are no clients connected").
    kill9(
        lab.pid_of(&id)
            .ok_or_else(|| anyhow::anyhow!("no kernel process"))?,
    )?;
    assert!(eventually(T, || lab.manager.get(&id).is_err()).await);
    assert!(eventually(T, || lab.processes().is_empty()).await);
    assert_eq!(lab.leftovers(), Vec::<String>::new());
    // A local kernel without clients is restarted.
    let (_, model) = lab.start(json!({"name": "tk"})).await;
    let id = model["id"].as_str().unwrap_or_default().to_owned();
    let pid = lab
        .pid_of(&id)
        .ok_or_else(|| anyhow::anyhow!("no kernel process"))?;
    kill9(pid)?;
    assert!(
        eventually(T, || lab.pid_of(&id).is_some_and(|new| new != pid)
            && lab
                .manager
                .get(&id)
                .is_ok_and(|s| s.execution_state == "idle"))
        .await
    );
    lab.manager.shutdown_all().await;
    Ok(())
}

/// The launch waits for the kernel's exit with one `wait` for the whole launch, and the
/// supervisor with one more: a `wait` made anew for every iopub message the starting kernel
/// publishes would restart a backend's liveness check each time (for launcher kernels a
/// communication-port probe; Toree's launcher drowned in them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_waits_for_the_kernel_s_exit_once() -> anyhow::Result<()> {
    let lab = Lab::new(|_| {})?;
    for _ in 0..3 {
        lab.waits.store(0, Ordering::SeqCst);
        let (status, model) = lab.start(json!({"name": "remote"})).await;
        assert_eq!(status, StatusCode::CREATED, "{model}");
        // The supervisor's own call may come just after the start answered; counted before it
        // came, it would fall into the next start's count.
        let both = eventually(T, || lab.waits.load(Ordering::SeqCst) >= 2).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let waits = lab.waits.load(Ordering::SeqCst);
        assert!(
            both && waits == 2,
            "{waits} calls of wait for one start (the launch and the supervisor make one each)"
        );
    }
    lab.manager.shutdown_all().await;
    assert!(eventually(T, || lab.processes().is_empty()).await);
    Ok(())
}

/// A kernel that exits because a port it was given was taken (its log says `Address already in
/// use`) is launched again on fresh ports within the same start; one that exits for another
/// reason is not (`failed_launches_answer_within_the_deadline_with_the_reason`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kernel_whose_port_was_taken_is_launched_again() -> anyhow::Result<()> {
    let lab = Lab::new(|_| {})?;
    let (status, model) = lab.start(json!({"name": "port_taken_once"})).await;
    assert_eq!(status, StatusCode::CREATED, "{model}");
    assert!(
        lab.dir.path().join("bind-tried").exists(),
        "the first attempt ran"
    );
    let id = model["id"].as_str().unwrap_or_default();
    assert_eq!(lab.manager.get(id).map(|k| k.restarts).ok(), Some(0));
    lab.manager.shutdown_all().await;
    assert!(eventually(T, || lab.processes().is_empty()).await);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kernel_that_stops_answering_heartbeats_is_reported_not_restarted() -> anyhow::Result<()>
{
    let lab = Lab::new(|_| {})?;
    let (_, model) = lab.start(json!({"name": "tk"})).await;
    let id = model["id"].as_str().unwrap_or_default().to_owned();
    let uri = format!("/api/kernels/{id}");
    let pid = lab
        .pid_of(&id)
        .ok_or_else(|| anyhow::anyhow!("no kernel process"))?;
    let signal = |sig: &str| {
        std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
    };
    signal("-STOP")?;
    // Its process still runs as far as the backend can tell: the model says what is wrong, and
    // the kernel is neither restarted nor removed.
    let mut reported = Value::Null;
    let deadline = Instant::now() + T;
    while Instant::now() < deadline {
        let (_, model) = lab.http(Method::GET, &uri, Value::Null).await;
        if model["reason"].is_string() {
            reported = model;
            break;
        }
        sleep(Duration::from_millis(250)).await;
    }
    signal("-CONT")?;
    assert_eq!(
        reported["reason"], "the kernel is not answering heartbeats",
        "{reported}"
    );
    assert_eq!(lab.pid_of(&id), Some(pid));
    // Answering again clears it.
    let mut cleared = false;
    let deadline = Instant::now() + T;
    while Instant::now() < deadline && !cleared {
        let (_, model) = lab.http(Method::GET, &uri, Value::Null).await;
        cleared = model.get("reason").is_none_or(Value::is_null);
        sleep(Duration::from_millis(250)).await;
    }
    assert!(cleared);
    lab.manager.shutdown_all().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Limits.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_starts_with_max_kernels_20() -> anyhow::Result<()> {
    let lab = Lab::new(|c| c.max_kernels = Some(20))?;
    let starts =
        (0..50).map(|_| lab.start(json!({"name": "tk", "env": {"KERNEL_USERNAME": "bob"}})));
    let results = futures_util::future::join_all(starts).await;
    let created = results
        .iter()
        .filter(|(status, _)| *status == StatusCode::CREATED)
        .count();
    let refused: Vec<&Value> = results
        .iter()
        .filter(|(status, _)| *status == StatusCode::FORBIDDEN)
        .map(|(_, body)| body)
        .collect();
    assert_eq!((created, refused.len()), (20, 30), "{results:?}");
    for body in refused {
        let reason = body["reason"].as_str().unwrap_or_default();
        assert!(
            reason.starts_with("A max kernels limit has been set to 20 and there are currently ")
                && reason.ends_with(" active and pending kernels."),
            "{body}"
        );
        assert_eq!(body["message"], "");
    }
    assert_eq!(lab.manager.list().len(), 20);
    assert_eq!(lab.processes().len(), 20);
    lab.manager.shutdown_all().await;
    assert!(
        eventually(T, || lab.processes().is_empty()).await,
        "{:?}",
        lab.processes()
    );
    assert_eq!(lab.leftovers(), Vec::<String>::new());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_limit_counts_starts_in_flight() -> anyhow::Result<()> {
    let lab = Lab::new(|c| c.max_kernels_per_user = Some(2))?;
    let starts = (0..6).map(|i| {
        let user = if i % 2 == 0 { "alice" } else { "bob" };
        lab.start(json!({"env": {"KERNEL_USERNAME": user}}))
    });
    let results = futures_util::future::join_all(starts).await;
    let created = results
        .iter()
        .filter(|(status, _)| *status == StatusCode::CREATED)
        .count();
    assert_eq!(created, 4, "{results:?}");
    for (status, body) in &results {
        if *status == StatusCode::FORBIDDEN {
            let reason = body["reason"].as_str().unwrap_or_default();
            assert!(
                reason.starts_with("A max kernels per user limit has been set to 2 and user '"),
                "{body}"
            );
        }
    }
    lab.manager.shutdown_all().await;
    assert!(eventually(T, || lab.processes().is_empty()).await);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// No leaks.

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_start_shutdown_cycles_leak_nothing() -> anyhow::Result<()> {
    const LANES: usize = 4;
    const CYCLES: usize = 500;
    let lab = Lab::new(|_| {})?;
    // Each lane has a port range of its own, above the ephemeral range (32768..60999 here) and
    // apart from the window unrestricted kernels of other test processes draw from
    // (10000..32767, see `PortAllocator`), so the ports a shutdown frees are the only ones its
    // lane's next start can take.
    let base: u16 = 61_000;
    for lane in 0..LANES {
        let lo = base + lane as u16 * 1_001;
        let dir = lab.dir.path().join(format!("lc-kernels/lane{lane}"));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("kernel.json"),
            serde_json::to_vec(&json!({"argv": [test_kernel(), "-f", "{connection_file}"],
                "display_name": "Lane", "language": "test",
                "metadata": {"process_proxy": {"class_name": "local",
                    "config": {"port_range": format!("{lo}..{}", lo + 1000)}}}}))?,
        )?;
    }
    async fn cycle(lab: &Lab, lane: usize) -> anyhow::Result<[u16; 5]> {
        let (status, model) = lab.start(json!({"name": format!("lane{lane}")})).await;
        anyhow::ensure!(status == StatusCode::CREATED, "{status} {model}");
        let id = model["id"].as_str().unwrap_or_default().to_owned();
        let used = ports(&lab.connection(&id)?);
        let (status, body) = lab
            .http(Method::DELETE, &format!("/api/kernels/{id}"), Value::Null)
            .await;
        anyhow::ensure!(status == StatusCode::NO_CONTENT, "{status} {body}");
        Ok(used)
    }
    // Warm up lazily created runtime resources before counting descriptors.
    cycle(&lab, 0).await?;
    let fds_before = open_fds();
    let started = Instant::now();
    let lanes = (0..LANES).map(|lane| {
        let lab = &lab;
        async move {
            let mut used = Vec::new();
            for _ in 0..CYCLES / LANES {
                used.extend(cycle(lab, lane).await?);
            }
            Ok::<_, anyhow::Error>(used)
        }
    });
    let mut used = Vec::new();
    for lane in futures_util::future::join_all(lanes).await {
        used.extend(lane?);
    }
    let elapsed = started.elapsed();
    println!(
        "{CYCLES} start/shutdown cycles in {:.1} s",
        elapsed.as_secs_f64()
    );
    assert_eq!(used.len(), CYCLES * 5);
    assert!(lab.manager.list().is_empty());
    assert_eq!(lab.processes(), Vec::new());
    assert_eq!(lab.leftovers(), Vec::<String>::new());
    used.sort_unstable();
    used.dedup();
    let busy: Vec<u16> = used.iter().copied().filter(|p| !port_free(*p)).collect();
    assert_eq!(busy, Vec::<u16>::new(), "ports still in use");
    // Sockets close asynchronously; give them a moment before counting.
    assert!(
        eventually(Duration::from_secs(5), || open_fds() <= fds_before).await,
        "file descriptors: {fds_before} before, {} after",
        open_fds()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Reconnects.

/// What a client saw of one cell.
#[derive(Debug, Default)]
struct Seen {
    cell: String,
    lines: Vec<String>,
    replies: usize,
    idle: bool,
}

impl Seen {
    fn add(&mut self, got: &Got) {
        if got.parent_id() != self.cell {
            return;
        }
        match (got.channel.as_str(), got.msg_type()) {
            ("iopub", "stream") => self
                .lines
                .push(got.content["text"].as_str().unwrap_or_default().to_owned()),
            ("shell", "execute_reply") => self.replies += 1,
            ("iopub", "status") => self.idle |= got.content["execution_state"] == "idle",
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_replays_ten_thousand_lines_exactly_once() -> anyhow::Result<()> {
    let lab = Lab::new(|c| {
        c.buffer_max_messages = 50_000;
        c.buffer_max_bytes = 256 << 20;
    })?;
    let server = serve(Arc::clone(&lab.manager)).await?;
    let (_, model) = lab.start(json!({"name": "tk"})).await;
    let id = model["id"].as_str().unwrap_or_default().to_owned();
    let mut ws = connect(&server, &id, Some("resume"), Mode::Legacy).await?;
    // The reply comes after the pause, while the client is away: it must be kept too.
    let cell = send_execute(&mut ws, Mode::Legacy, "emit 5000\nsleep 1\nemit 5000").await?;
    let mut seen = Seen {
        cell,
        ..Seen::default()
    };
    while seen.lines.len() < 1000 {
        seen.add(&expect_msg(&mut ws).await?);
    }
    // Leave mid-output; what the gateway already sent is still read to the end of the stream.
    ws.send(Frame::Close(None)).await?;
    while let Ok(Some(Ok(frame))) = timeout(T, ws.next()).await {
        if let Frame::Text(text) = frame {
            let v: Value = serde_json::from_str(text.as_str())?;
            seen.add(&Got {
                channel: v["channel"].as_str().unwrap_or_default().to_owned(),
                header: v["header"].clone(),
                parent: v["parent_header"].clone(),
                content: v["content"].clone(),
            });
        }
    }
    drop(ws);
    let before = seen.lines.len();
    assert!(before < 10_000, "the client saw everything before leaving");
    assert!(eventually(T, || lab.manager.get(&id).is_ok_and(|s| s.connections == 0)).await);
    assert!(
        eventually(T, || lab
            .manager
            .get(&id)
            .is_ok_and(|s| s.execution_state == "idle"))
        .await
    );
    sleep(Duration::from_millis(300)).await;

    let mut ws = connect(&server, &id, Some("resume"), Mode::Legacy).await?;
    while !(seen.idle && seen.replies >= 1) {
        seen.add(&expect_msg(&mut ws).await?);
    }
    // Nothing more for that cell arrives later (no duplicates).
    while let Ok(Ok(got)) = timeout(Duration::from_millis(500), expect_msg(&mut ws)).await {
        seen.add(&got);
    }
    assert_eq!(seen.replies, 1);
    let want: Vec<String> = (0..5000)
        .chain(0..5000)
        .map(|i| format!("line {i}\n"))
        .collect();
    assert_eq!(
        seen.lines.len(),
        want.len(),
        "{before} lines before leaving"
    );
    assert!(seen.lines == want, "lines out of order or duplicated");
    lab.manager.shutdown_all().await;
    Ok(())
}

/// Reads `ws` to its end (close or failure), counting what belongs to the cell.
async fn drain(ws: &mut Ws, seen: &mut Seen) {
    while let Ok(Ok(Ok(got))) = timeout(T, next(ws)).await {
        seen.add(&got);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacing_connection_takes_over_what_was_queued() -> anyhow::Result<()> {
    let lab = Lab::new(|c| c.buffer_max_messages = 50_000)?;
    let server = serve(Arc::clone(&lab.manager)).await?;
    let (_, model) = lab.start(json!({"name": "tk"})).await;
    let id = model["id"].as_str().unwrap_or_default().to_owned();
    let mut old = connect(&server, &id, Some("same"), Mode::Legacy).await?;
    let cell = send_execute(&mut old, Mode::Legacy, "emit 3000\nsleep 0.5\necho done").await?;
    let mut seen = Seen {
        cell,
        ..Seen::default()
    };
    while seen.lines.len() < 100 {
        seen.add(&expect_msg(&mut old).await?);
    }
    // A new connection with the same session id replaces the old one at once (EG waits ~42 s
    // and then fails); what the old one had not delivered, and its sockets, carry over.
    let mut new = connect(&server, &id, Some("same"), Mode::Legacy).await?;
    drain(&mut old, &mut seen).await;
    while !(seen.idle && seen.replies == 1) {
        seen.add(&expect_msg(&mut new).await?);
    }
    while let Ok(Ok(got)) = timeout(Duration::from_millis(500), expect_msg(&mut new)).await {
        seen.add(&got);
    }
    let want: Vec<String> = (0..3000)
        .map(|i| format!("line {i}\n"))
        .chain(["done\n".to_owned()])
        .collect();
    assert_eq!(seen.replies, 1);
    assert_eq!(seen.lines.len(), want.len());
    assert!(seen.lines == want, "lines out of order or duplicated");
    assert_eq!(lab.manager.get(&id)?.connections, 1);
    assert_eq!(
        execute(&mut new, Mode::Legacy, "echo still here").await?,
        "still here\n"
    );
    lab.manager.shutdown_all().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_buffer_is_bounded_and_expires() -> anyhow::Result<()> {
    let lab = Lab::new(|c| {
        c.buffer_max_messages = 100;
        c.buffer_ttl = Duration::from_secs(1);
    })?;
    let server = serve(Arc::clone(&lab.manager)).await?;
    let (_, model) = lab.start(json!({"name": "tk"})).await;
    let id = model["id"].as_str().unwrap_or_default().to_owned();

    // Bounded: of 1000 lines printed while away, the newest ones are kept, in order.
    let mut ws = connect(&server, &id, Some("b"), Mode::Legacy).await?;
    assert_eq!(execute(&mut ws, Mode::Legacy, "echo hi").await?, "hi\n");
    ws.close(None).await?;
    drop(ws);
    assert!(eventually(T, || lab.manager.get(&id).is_ok_and(|s| s.connections == 0)).await);
    let info = lab.connection(&id)?;
    let mut other = KernelClient::connect(&info, &SocketOptions::default()).await?;
    assert_eq!(
        other.execute("emit 1000", T).await?.stdout.lines().count(),
        1000
    );
    // The gateway has seen all of it once it has seen the closing `idle`.
    assert!(
        eventually(T, || lab
            .manager
            .get(&id)
            .is_ok_and(|s| s.execution_state == "idle"))
        .await
    );
    sleep(Duration::from_millis(200)).await;
    let mut ws = connect(&server, &id, Some("b"), Mode::Legacy).await?;
    let mut kept = Vec::new();
    while let Ok(Ok(got)) = timeout(Duration::from_millis(500), expect_msg(&mut ws)).await {
        if got.msg_type() == "stream" {
            kept.push(got.content["text"].as_str().unwrap_or_default().to_owned());
        }
    }
    assert!(!kept.is_empty() && kept.len() < 100, "{}", kept.len());
    assert_eq!(kept.last().map(String::as_str), Some("line 999\n"));
    ws.close(None).await?;
    drop(ws);

    // Expired: after the TTL nothing is replayed.
    assert!(eventually(T, || lab.manager.get(&id).is_ok_and(|s| s.connections == 0)).await);
    assert_eq!(other.execute("echo late", T).await?.stdout, "late\n");
    sleep(Duration::from_millis(1500)).await;
    let mut ws = connect(&server, &id, Some("b"), Mode::Legacy).await?;
    while let Ok(Ok(got)) = timeout(Duration::from_millis(500), expect_msg(&mut ws)).await {
        assert_ne!(
            got.content["text"], "late\n",
            "an expired buffer was replayed"
        );
    }
    drop(other);
    lab.manager.shutdown_all().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Launch deadline.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_launches_answer_within_the_deadline_with_the_reason() -> anyhow::Result<()> {
    let lab = Lab::new(|c| c.max_launch_timeout = Duration::from_secs(2))?;
    // Exits at once: the exit code and the kernel's last log lines, right away.
    let started = Instant::now();
    let (status, body) = lab
        .start(json!({"name": "quits", "env": {"KERNEL_LAUNCH_TIMEOUT": "20"}}))
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let reason = body["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("exit code 7"), "{reason}");
    assert!(reason.contains("no GPU available on this node"), "{reason}");

    // Never ready: the request asks for 1000 s, the gateway's maximum (2 s) applies.
    let started = Instant::now();
    let (status, body) = lab
        .start(json!({"name": "never", "env": {"KERNEL_LAUNCH_TIMEOUT": "1000"}}))
        .await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(6),
        "{took:?}"
    );
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let reason = body["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("did not become ready within 2.0 s"),
        "{reason}"
    );

    // A shorter request timeout is honoured.
    let started = Instant::now();
    let (status, _) = lab
        .start(json!({"name": "never", "env": {"KERNEL_LAUNCH_TIMEOUT": "0.5"}}))
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(started.elapsed() < Duration::from_secs(2));

    assert!(
        eventually(T, || lab.processes().is_empty()).await,
        "{:?}",
        lab.processes()
    );
    assert_eq!(lab.leftovers(), Vec::<String>::new());
    assert!(lab.manager.list().is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starting_kernel_is_visible_by_id_and_can_be_shut_down() -> anyhow::Result<()> {
    let lab = Arc::new(Lab::new(|c| c.max_kernels = Some(1))?);
    let id = "0d6f2a3e-5b7c-4d8e-9f10-1a2b3c4d5e6f";
    let starting = {
        let lab = Arc::clone(&lab);
        tokio::spawn(async move {
            lab.start(
                json!({"name": "never", "env": {"KERNEL_ID": id, "KERNEL_LAUNCH_TIMEOUT": "30"}}),
            )
            .await
        })
    };
    let uri = format!("/api/kernels/{id}");
    let mut model = Value::Null;
    let deadline = Instant::now() + T;
    while Instant::now() < deadline {
        let (status, body) = lab.http(Method::GET, &uri, Value::Null).await;
        if status == StatusCode::OK {
            model = body;
            break;
        }
        sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(model["execution_state"], "starting", "{model}");
    assert_eq!(model["id"], id);
    // EG lists only started kernels, but the start counts against the limit.
    let (_, list) = lab.http(Method::GET, "/api/kernels", Value::Null).await;
    assert_eq!(list, json!([]));
    let (status, _) = lab.start(json!({"name": "tk"})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(eventually(T, || !lab.processes().is_empty()).await);

    let (status, _) = lab.http(Method::DELETE, &uri, Value::Null).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = starting.await?;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        body["reason"]
            .as_str()
            .is_some_and(|r| r.contains("was shut down while it was starting")),
        "{body}"
    );
    let (status, _) = lab.http(Method::GET, &uri, Value::Null).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        eventually(T, || lab.processes().is_empty()).await,
        "{:?}",
        lab.processes()
    );
    assert_eq!(lab.leftovers(), Vec::<String>::new());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Culling.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn culled_kernels_tell_their_clients_why() -> anyhow::Result<()> {
    let lab = Lab::new(|c| {
        c.culling.idle_timeout = Duration::from_secs(1);
        c.culling.interval = Duration::from_millis(200);
        c.culling.cull_connected = true;
    })?;
    let server = serve(Arc::clone(&lab.manager)).await?;
    let (_, model) = lab.start(json!({"name": "tk"})).await;
    let id = model["id"].as_str().unwrap_or_default().to_owned();
    let mut ws = connect(&server, &id, Some("c"), Mode::V1).await?;
    let status = loop {
        let status = next_status(&mut ws).await?;
        if status["execution_state"] == "dead" {
            break status;
        }
    };
    assert!(
        status["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("culled: idle for")),
        "{status}"
    );
    let closed = loop {
        match next(&mut ws).await? {
            Ok(_) => continue,
            Err(code) => break code,
        }
    };
    assert!(closed.is_some());
    assert!(lab.manager.get(&id).is_err());
    assert!(eventually(T, || lab.processes().is_empty()).await);
    assert_eq!(lab.leftovers(), Vec::<String>::new());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_kernels_have_their_own_timeout() -> anyhow::Result<()> {
    let lab = Lab::new(|c| {
        c.culling.idle_timeout = Duration::from_secs(1);
        c.culling.interval = Duration::from_millis(200);
        c.culling.cull_busy = true;
        c.culling.busy_timeout = Duration::from_secs(4);
    })?;
    let (_, idle) = lab.start(json!({"name": "tk"})).await;
    let (_, busy) = lab.start(json!({"name": "tk"})).await;
    let (idle, busy) = (
        idle["id"].as_str().unwrap_or_default().to_owned(),
        busy["id"].as_str().unwrap_or_default().to_owned(),
    );
    let mut client =
        KernelClient::connect(&lab.connection(&busy)?, &SocketOptions::default()).await?;
    let running = tokio::spawn(async move { client.execute("sleep 30", T).await });
    let started = Instant::now();
    assert!(eventually(T, || lab.manager.get(&idle).is_err()).await);
    // The busy one outlives the idle timeout, and goes after its own.
    assert!(
        lab.manager
            .get(&busy)
            .is_ok_and(|s| s.execution_state == "busy")
    );
    assert!(eventually(T, || lab.manager.get(&busy).is_err()).await);
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(3), "{took:?}");
    running.abort();
    assert!(eventually(T, || lab.processes().is_empty()).await);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Users and impersonation.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impersonated_local_kernels_run_as_the_user() -> anyhow::Result<()> {
    let lab = Lab::new(|c| c.impersonation_enabled = true)?;
    // The kernel's user must reach its connection file and working directory.
    use std::os::unix::fs::PermissionsExt;
    for dir in [lab.dir.path(), lab.runtime_dir.as_path()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))?;
    }
    let (status, body) = lab
        .start(json!({"env": {"KERNEL_USERNAME": "no-such-user-4711"}}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        body["reason"]
            .as_str()
            .is_some_and(|r| r.contains("'no-such-user-4711' does not exist")),
        "{body}"
    );
    let (status, _) = lab.start(json!({"env": {"KERNEL_USERNAME": "root"}})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let (status, body) = lab
        .start(json!({"env": {"KERNEL_USERNAME": "nobody"}}))
        .await;
    if !nix::unistd::geteuid().is_root() {
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            body["reason"]
                .as_str()
                .is_some_and(|r| r.contains("does not run as root")),
            "{body}"
        );
        return Ok(());
    }
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["id"].as_str().unwrap_or_default().to_owned();
    let pid = lab
        .pid_of(&id)
        .ok_or_else(|| anyhow::anyhow!("no kernel process"))?;
    let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let uid_line = proc_status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap_or_default()
        .to_owned();
    let nobody =
        nix::unistd::User::from_name("nobody")?.ok_or_else(|| anyhow::anyhow!("no user nobody"))?;
    assert!(
        uid_line
            .split_whitespace()
            .skip(1)
            .all(|uid| uid == nobody.uid.to_string()),
        "{uid_line}"
    );
    let environ = std::fs::read(format!("/proc/{pid}/environ"))?;
    let home = format!("HOME={}", nobody.dir.display());
    assert!(
        environ.split(|b| *b == 0).any(|var| var == home.as_bytes()),
        "kernel environment lacks {home}"
    );
    // It works as a kernel, and shuts down like any other.
    let mut client =
        KernelClient::connect(&lab.connection(&id)?, &SocketOptions::default()).await?;
    assert_eq!(
        client.execute("echo as nobody", T).await?.stdout,
        "as nobody\n"
    );
    drop(client);
    let (status, _) = lab
        .http(Method::DELETE, &format!("/api/kernels/{id}"), Value::Null)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(eventually(T, || lab.processes().is_empty()).await);
    assert_eq!(lab.leftovers(), Vec::<String>::new());
    Ok(())
}

#[tokio::test]
async fn user_lists_apply_to_starts_and_listings() -> anyhow::Result<()> {
    let lab = Lab::new(|c| {
        c.authorized_users = vec!["alice,bob".to_owned()];
        c.unauthorized_users = vec!["root".to_owned(), "mallory".to_owned()];
    })?;
    // Per-kernelspec lists: `authorized_users` replaces the global one, `unauthorized_users` adds.
    let spec_dir = lab.dir.path().join("lc-kernels/carol-only");
    std::fs::create_dir_all(&spec_dir)?;
    std::fs::write(
        spec_dir.join("kernel.json"),
        serde_json::to_vec(&json!({"argv": [test_kernel(), "-f", "{connection_file}"],
            "display_name": "Carol only", "language": "test",
            "metadata": {"process_proxy": {"class_name": "local",
                "config": {"authorized_users": "carol,bob", "unauthorized_users": "bob"}}}}))?,
    )?;
    let names = |body: &Value| -> Vec<String> {
        let mut names: Vec<String> = body["kernelspecs"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        names.sort();
        names
    };
    // (user, kernelspecs listed for ?user=)
    let listings = [
        (
            "alice",
            vec!["never", "port_taken_once", "quits", "remote", "tk"],
        ),
        (
            "bob",
            vec!["never", "port_taken_once", "quits", "remote", "tk"],
        ),
        ("carol", vec!["carol-only"]),
        ("mallory", vec![]),
        ("bobby", vec![]),
    ];
    for (user, want) in listings {
        let (status, body) = lab
            .http(
                Method::GET,
                &format!("/api/kernelspecs?user={user}"),
                Value::Null,
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(names(&body), want, "{user}");
    }
    let (_, all) = lab.http(Method::GET, "/api/kernelspecs", Value::Null).await;
    assert_eq!(names(&all).len(), 6);
    // Starts are refused with EG's texts before anything is allocated.
    let refusals = [
        (
            "tk",
            "carol",
            "User 'carol' is not in the set of users authorized to start kernel 'Test kernel'.",
        ),
        (
            "carol-only",
            "bob",
            "User 'bob' is not authorized to start kernel 'Carol only'.",
        ),
        (
            "carol-only",
            "alice",
            "User 'alice' is not in the set of users authorized to start kernel 'Carol only'.",
        ),
        (
            "tk",
            "mallory",
            "User 'mallory' is not authorized to start kernel 'Test kernel'.",
        ),
    ];
    for (spec, user, text) in refusals {
        let (status, body) = lab
            .start(json!({"name": spec, "env": {"KERNEL_USERNAME": user}}))
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{spec} {user}");
        assert!(
            body["reason"].as_str().is_some_and(|r| r.starts_with(text)),
            "{body}"
        );
    }
    // Without KERNEL_USERNAME the gateway's user ("tester") is the user: not authorized here.
    let (status, body) = lab.start(json!({"name": "tk"})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("User 'tester'"))
    );
    assert_eq!(lab.leftovers(), Vec::<String>::new());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Gateway exit.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_exit_shuts_every_kernel_down_in_bounded_time() -> anyhow::Result<()> {
    let lab = Lab::new(|_| {})?;
    let mut infos = Vec::new();
    for _ in 0..3 {
        let (_, model) = lab.start(json!({"name": "tk"})).await;
        infos.push(lab.connection(model["id"].as_str().unwrap_or_default())?);
    }
    // One of them is busy and ignores SIGINT outside `sleep`... it gets SIGTERM/SIGKILL in time.
    let mut client = KernelClient::connect(&infos[0], &SocketOptions::default()).await?;
    let busy = tokio::spawn(async move { client.execute("emit 100000000", T).await });
    sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    lab.manager.shutdown_all().await;
    let took = started.elapsed();
    // shutdown_wait_time is 2 s here; the bound allows 2 s of slack.
    assert!(took < Duration::from_secs(4), "{took:?}");
    busy.abort();
    assert_eq!(lab.processes(), Vec::new());
    assert_eq!(lab.leftovers(), Vec::<String>::new());
    assert!(
        infos
            .iter()
            .all(|info| ports(info).iter().all(|p| port_free(*p)))
    );
    let (status, _) = lab.start(json!({"name": "tk"})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    Ok(())
}
