//! The `yarn` backend (`resource_managers::yarn::YarnResourceManager`) against the RM emulator:
//! the kernelspec runs the stand-in `spark-submit`, whose application master is
//! gateway_provisioners' `launch_ipykernel.py` with the venv's ipykernel, run by the emulator's
//! NodeManager on this machine, so the launcher calls the backend's response listener back.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jupyter_protocol::{KernelClient, SocketOptions};
use kernel_launcher::{BackendRef, KernelSpec, ListenerOptions, PortRange, ResponseListener};
use resource_managers::yarn::{YarnConfig, YarnResourceManager};
use resource_managers::{Error, LaunchRequest, LaunchedKernel, ProcessState, ResourceManager};
use tests::yarn::{EmulatorConfig, RmAppState, YarnEmulator};

use crate::{Workdir, any_port, fast_config, finish};

const SECOND: Duration = Duration::from_secs(1);
const EG_YARN_CLASS: &str =
    "enterprise_gateway.services.processproxies.yarn.YarnClusterProcessProxy";

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn venv_python() -> PathBuf {
    workspace().join(".venv/bin/python")
}

/// gateway_provisioners' Python launcher, assembled into `dir` the way its spec installers do
/// (the launcher next to the shared `server_listener.py`); returns the launcher's path.
fn launch_ipykernel(dir: &Path) -> PathBuf {
    let lib = workspace().join(".venv/lib");
    let python_dir = std::fs::read_dir(&lib)
        .expect("venv lib")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("python3"))
        })
        .expect("python3.x in the venv");
    let launchers = python_dir.join("site-packages/gateway_provisioners/kernel-launchers");
    let scripts = dir.join("scripts");
    std::fs::create_dir_all(&scripts).expect("scripts dir");
    std::fs::copy(
        launchers.join("python/scripts/launch_ipykernel.py"),
        scripts.join("launch_ipykernel.py"),
    )
    .expect("copy launch_ipykernel.py");
    std::fs::copy(
        launchers.join("shared/scripts/server_listener.py"),
        scripts.join("server_listener.py"),
    )
    .expect("copy server_listener.py");
    scripts.join("launch_ipykernel.py")
}

/// A backend with its own response listener and log dir.
struct Fixture {
    dir: tempfile::TempDir,
    listener: Arc<ResponseListener>,
    backend: Arc<YarnResourceManager>,
}

async fn fixture(configure: impl FnOnce(&mut YarnConfig)) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = ResponseListener::bind(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        ListenerOptions::default(),
    )
    .await
    .expect("listener");
    let mut config = YarnConfig::new(listener.clone(), dir.path().join("logs"));
    config.launcher.search_path = vec![PathBuf::from("/usr/bin"), PathBuf::from("/bin")];
    config.launcher.poll_interval = Duration::from_millis(100);
    config.max_poll_attempts = 50;
    config.launcher.request_timeout = 5 * SECOND;
    configure(&mut config);
    Fixture {
        dir,
        listener,
        backend: Arc::new(YarnResourceManager::new(config)),
    }
}

/// A YARN cluster-mode kernelspec (EG's class name) calling the stand-in `spark-submit`
/// directly; `app` is the application master (defaults to the Python launcher).
fn yarn_spec(root: &Path, name: &str, app: Option<&Path>) -> KernelSpec {
    let dir = root.join("kernels").join(name);
    std::fs::create_dir_all(&dir).expect("spec dir");
    let mut argv: Vec<String> = std::iter::once(env!("CARGO_BIN_EXE_spark-submit"))
        .chain(tests::yarn::CLUSTER_SUBMIT_ARGS.iter().copied())
        .map(str::to_owned)
        .collect();
    argv.push("--conf".into());
    argv.push(format!(
        "spark.yarn.appMasterEnv.PYSPARK_PYTHON={}",
        venv_python().display()
    ));
    match app {
        Some(app) => argv.push(app.display().to_string()),
        None => {
            argv.push(launch_ipykernel(&dir).display().to_string());
            for a in [
                "--kernel-id",
                "{kernel_id}",
                "--port-range",
                "{port_range}",
                "--response-address",
                "{response_address}",
                "--public-key",
                "{public_key}",
                "--spark-context-initialization-mode",
                "none",
            ] {
                argv.push(a.into());
            }
        }
    }
    let json = serde_json::json!({
        "argv": argv,
        "display_name": name,
        "language": "python",
        "metadata": {"process_proxy": {"class_name": EG_YARN_CLASS}},
    });
    std::fs::write(dir.join("kernel.json"), json.to_string()).expect("kernel.json");
    let spec = KernelSpec::load(&dir).expect("spec");
    assert_eq!(spec.backend, BackendRef::ProcessProxy(EG_YARN_CLASS.into()));
    spec
}

/// A launch request as alice; `HADOOP_CONF_DIR` (for `spark-submit`) when given.
fn request(spec: KernelSpec, conf_dir: Option<&Path>, timeout: Duration) -> LaunchRequest {
    let kernel_id = uuid::Uuid::new_v4().to_string();
    let mut env = BTreeMap::from([
        ("KERNEL_ID".to_owned(), kernel_id.clone()),
        ("KERNEL_USERNAME".to_owned(), "alice".to_owned()),
        ("HADOOP_USER_NAME".to_owned(), "alice".to_owned()),
        ("PATH".to_owned(), "/usr/bin:/bin".to_owned()),
    ]);
    if let Some(dir) = conf_dir {
        env.insert("HADOOP_CONF_DIR".into(), dir.display().to_string());
    }
    LaunchRequest {
        kernel_id,
        spec,
        env,
        cwd: None,
        port_range: PortRange::ANY,
        timeout,
        previous: None,
        username: "alice".into(),
        run_as: None,
        placement: Default::default(),
    }
}

fn app_id_of(kernel: &LaunchedKernel) -> String {
    kernel.process.record().process["application_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Waits until the emulator holds an app for `kernel_id`.
async fn app_for(emu: &YarnEmulator, kernel_id: &str) -> String {
    for _ in 0..1000 {
        if let Some(app) = emu.apps().into_iter().find(|a| a.name == kernel_id) {
            return app.id;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no application for {kernel_id}");
}

/// Stops a kernel the way the gateway does (shutdown_request, then terminate and clean up).
async fn shut_down(kernel: LaunchedKernel, client: Option<KernelClient>) -> ProcessState {
    if let Some(mut client) = client {
        let _ = client.shutdown(false, 5 * SECOND).await;
    }
    let state = kernel
        .process
        .terminate(5 * SECOND)
        .await
        .expect("terminate");
    kernel.process.cleanup(false).await;
    state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yarn_kernel_launches_executes_interrupts_restarts_and_shuts_down() {
    let emu = YarnEmulator::start_with(fast_config(), &[any_port()])
        .await
        .expect("emulator");
    let work = Workdir::new(&[emu.url()]);
    let url = emu.url();
    let fx = fixture(|c| c.yarn_endpoint = Some(format!("{url}/ws/v1/cluster"))).await;
    assert_eq!(fx.backend.name(), "yarn");
    let spec = yarn_spec(fx.dir.path(), "yarn_python", None);
    let mut launch = request(spec, Some(work.path()), 60 * SECOND);
    // EG's impersonation: `--proxy-user <KERNEL_USERNAME>` makes the app bob's.
    launch
        .env
        .insert("EG_IMPERSONATION_ENABLED".into(), "True".into());
    launch.env.insert("KERNEL_USERNAME".into(), "bob".into());
    let kernel_id = launch.kernel_id.clone();

    let kernel = fx.backend.launch(launch.clone()).await.expect("launch");
    assert_eq!(fx.listener.pending_count(), 0);
    assert_eq!(kernel.connection.ip, "127.0.0.1");
    let record = kernel.process.record();
    assert_eq!(record.resource_manager, "yarn");
    let app_id = app_id_of(&kernel);
    let app = emu.app(&app_id).expect("the recorded app exists");
    assert_eq!(app.name, kernel_id);
    assert_eq!(app.user, "bob", "--proxy-user was inserted");
    assert_eq!(app.state, RmAppState::Running);
    assert!(record.process["comm_port"].as_u64().unwrap_or(0) > 0);

    let mut client = KernelClient::connect(&kernel.connection, &SocketOptions::default())
        .await
        .expect("connect");
    assert_eq!(
        client.kernel_info(60 * SECOND).await.expect("info").status,
        "ok"
    );
    let out = client
        .execute("print(6 * 7)", 30 * SECOND)
        .await
        .expect("execute");
    assert_eq!(out.stdout.trim(), "42");
    assert_eq!(kernel.process.poll().await, ProcessState::Running);

    // Interrupt through the launcher's communication port while a cell sleeps.
    let mut client = crate::interrupt_a_sleeping_cell(client, kernel.process.as_ref()).await;

    // Re-attaching from the record finds the same application without a search.
    let again = fx.backend.reattach(&record).await.expect("reattach");
    assert_eq!(app_id_of(&again), app_id);
    assert_eq!(again.process.poll().await, ProcessState::Running);
    again.process.detach();
    drop(again);

    // Restart as the gateway does: shutdown_request, terminate, launch again (new application).
    client.shutdown(true, 5 * SECOND).await.expect("shutdown");
    drop(client);
    let state = kernel
        .process
        .terminate(5 * SECOND)
        .await
        .expect("terminate");
    assert!(matches!(state, ProcessState::Exited { .. }), "{state:?}");
    kernel.process.cleanup(true).await;
    let old = emu.app(&app_id).expect("old app");
    assert!(old.state.is_final(), "{old:?}");
    let second = fx.backend.launch(launch).await.expect("relaunch");
    let second_id = app_id_of(&second);
    assert_ne!(second_id, app_id);
    let mut client = KernelClient::connect(&second.connection, &SocketOptions::default())
        .await
        .expect("connect");
    let out = client
        .execute("print('again')", 60 * SECOND)
        .await
        .expect("execute");
    assert_eq!(out.stdout.trim(), "again");

    // Shutdown: the application ends and nothing is left in the RM.
    let state = shut_down(second, Some(client)).await;
    assert!(matches!(state, ProcessState::Exited { .. }), "{state:?}");
    assert!(
        emu.app(&second_id).is_some_and(|a| a.state.is_final()),
        "{:?}",
        emu.app(&second_id)
    );
    assert!(
        std::fs::read_to_string(fx.dir.path().join(format!("logs/kernel-{kernel_id}.log")))
            .unwrap_or_default()
            .contains("Submitted application"),
        "spark-submit output goes to the kernel log"
    );
    finish(emu).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yarn_launch_survives_rm_failover_mid_launch() {
    let mut emu = YarnEmulator::start_with(fast_config(), &[any_port(), any_port()])
        .await
        .expect("emulator");
    let urls = [emu.rm_url(0).expect("rm1"), emu.rm_url(1).expect("rm2")];
    // The RMs come from yarn-site.xml (HA rm-ids), as with HADOOP_CONF_DIR.
    let work = Workdir::new(&urls);
    let conf = work.path().to_path_buf();
    let fx = fixture(|c| c.hadoop_conf_dir = Some(conf)).await;
    let spec = yarn_spec(fx.dir.path(), "yarn_python", None);
    let launch = request(spec, Some(work.path()), 60 * SECOND);
    let kernel_id = launch.kernel_id.clone();
    // RM 1, first in the list, starts as a standby (redirecting to RM 2).
    emu.fail_over_to(1);
    emu.hold_new_apps(true);
    let backend = fx.backend.clone();
    let launching = tokio::spawn(async move { backend.launch(launch).await });
    let app_id = app_for(&emu, &kernel_id).await;
    // Let the backend see the ACCEPTED app through RM 2, then RM 2 goes away and RM 1 takes
    // over.
    tokio::time::sleep(Duration::from_millis(500)).await;
    emu.stop_rm(1).await;
    emu.fail_over_to(0);
    assert!(emu.release(&app_id));
    let kernel = tokio::time::timeout(60 * SECOND, launching)
        .await
        .expect("launch in time")
        .expect("join")
        .expect("launch through the standby-turned-active RM");
    assert_eq!(app_id_of(&kernel), app_id);
    let mut client = KernelClient::connect(&kernel.connection, &SocketOptions::default())
        .await
        .expect("connect");
    assert_eq!(
        client.kernel_info(60 * SECOND).await.expect("info").status,
        "ok"
    );
    assert_eq!(kernel.process.poll().await, ProcessState::Running);
    let state = shut_down(kernel, Some(client)).await;
    assert!(matches!(state, ProcessState::Exited { .. }), "{state:?}");
    finish(emu).await;
}

#[tokio::test]
async fn yarn_submit_failure_reaches_the_client_with_its_output() {
    let emu = YarnEmulator::start_with(fast_config(), &[any_port()])
        .await
        .expect("emulator");
    let url = emu.url();
    let fx = fixture(|c| c.yarn_endpoint = Some(url)).await;
    let spec = yarn_spec(fx.dir.path(), "yarn_python", None);
    // No HADOOP_CONF_DIR in the kernel's env: spark-submit exits 1 at once.
    let launch = request(spec, None, 30 * SECOND);
    let started = tokio::time::Instant::now();
    let err = fx.backend.launch(launch).await.err();
    let Some(Error::ExitedDuringLaunch { status, log_tail }) = &err else {
        panic!("expected ExitedDuringLaunch, got {err:?}");
    };
    assert!(status.contains("exit code 1"), "{status}");
    assert!(
        log_tail.contains("either HADOOP_CONF_DIR or YARN_CONF_DIR must be set"),
        "{log_tail}"
    );
    assert!(started.elapsed() < 10 * SECOND, "failed fast");
    assert_eq!(fx.listener.pending_count(), 0);
    assert!(emu.apps().is_empty());
    finish(emu).await;
}

#[tokio::test]
async fn yarn_failed_application_reports_its_diagnostics() {
    let emu = YarnEmulator::start_with(fast_config(), &[any_port()])
        .await
        .expect("emulator");
    let work = Workdir::new(&[emu.url()]);
    let url = emu.url();
    let fx = fixture(|c| c.yarn_endpoint = Some(url)).await;
    let am = fx.dir.path().join("broken-am.sh");
    std::fs::write(
        &am,
        "#!/bin/sh\necho 'ModuleNotFoundError: No module named ipykernel_broken' >&2\nexit 3\n",
    )
    .expect("am script");
    let mut perm = std::fs::metadata(&am).expect("meta").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(&am, perm).expect("chmod");
    let spec = yarn_spec(fx.dir.path(), "yarn_broken", Some(&am));
    let launch = request(spec, Some(work.path()), 30 * SECOND);
    let kernel_id = launch.kernel_id.clone();
    let err = fx.backend.launch(launch).await.err();
    let Some(Error::ExitedDuringLaunch { status, .. }) = &err else {
        panic!("expected ExitedDuringLaunch, got {err:?}");
    };
    assert!(status.contains("'FAILED'"), "{status}");
    assert!(
        status.contains("No module named ipykernel_broken"),
        "the diagnostics reach the client: {status}"
    );
    let apps = emu.apps();
    assert_eq!(apps.len(), 1);
    assert_eq!(apps[0].name, kernel_id);
    assert_eq!(apps[0].state, RmAppState::Failed);
    finish(emu).await;
}

#[tokio::test]
async fn yarn_deadline_while_accepted_is_a_capacity_error_and_kills_the_app() {
    let emu = YarnEmulator::start_with(fast_config(), &[any_port()])
        .await
        .expect("emulator");
    let work = Workdir::new(&[emu.url()]);
    let url = emu.url();
    let fx = fixture(|c| c.yarn_endpoint = Some(url)).await;
    emu.hold_new_apps(true);
    let spec = yarn_spec(fx.dir.path(), "yarn_python", None);
    let launch = request(spec, Some(work.path()), 3 * SECOND);
    let started = tokio::time::Instant::now();
    let err = fx.backend.launch(launch).await.err();
    let Some(Error::Capacity(reason)) = &err else {
        panic!("expected Capacity, got {err:?}");
    };
    assert!(
        reason.contains("YARN resources unavailable after")
            && reason.contains("launch timeout: 3.0"),
        "{reason}"
    );
    assert!(
        started.elapsed() < 3 * SECOND + 2 * SECOND,
        "within the gateway's grace"
    );
    let apps = emu.apps();
    assert_eq!(apps.len(), 1, "{apps:?}");
    let killed = emu
        .wait_for_state(&apps[0].id, RmAppState::Killed, 5 * SECOND)
        .await;
    assert_eq!(killed.map(|a| a.state), Some(RmAppState::Killed));
    finish(emu).await;
}

#[tokio::test]
async fn yarn_queue_over_threshold_fails_with_capacity_before_submitting() {
    let config = EmulatorConfig {
        node_labels: vec!["gpu".into()],
        ..fast_config()
    };
    let emu = YarnEmulator::start_with(config, &[any_port()])
        .await
        .expect("emulator");
    let work = Workdir::new(&[emu.url()]);
    let url = emu.url();
    let fx = fixture(|c| c.yarn_endpoint = Some(url)).await;
    emu.set_partition_usage("default", "gpu", 99.0);
    let spec = yarn_spec(fx.dir.path(), "yarn_python", None);
    let mut launch = request(spec, Some(work.path()), 2 * SECOND);
    launch.env.insert("KERNEL_QUEUE".into(), "default".into());
    launch.env.insert("KERNEL_NODE_LABEL".into(), "gpu".into());
    let err = fx.backend.launch(launch.clone()).await.err();
    let Some(Error::Capacity(reason)) = &err else {
        panic!("expected Capacity, got {err:?}");
    };
    assert!(
        reason.starts_with("Yarn Compute Resource is unavailable after"),
        "{reason}"
    );
    assert!(emu.apps().is_empty(), "nothing was submitted");
    // A threshold above the usage lets the launch go on (it then waits for the app: hold it and
    // let the short deadline end it).
    launch
        .env
        .insert("YARN_PARTITION_THRESHOLD".into(), "99.5".into());
    emu.hold_new_apps(true);
    let err = fx.backend.launch(launch).await.err();
    assert!(
        matches!(err, Some(Error::Capacity(ref r)) if r.contains("YARN resources unavailable")),
        "{err:?}"
    );
    let apps = emu.apps();
    assert_eq!(apps.len(), 1);
    let killed = emu
        .wait_for_state(&apps[0].id, RmAppState::Killed, 5 * SECOND)
        .await;
    assert_eq!(killed.map(|a| a.state), Some(RmAppState::Killed));
    finish(emu).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yarn_kernel_killed_from_the_rm_is_reported_exited() {
    let emu = YarnEmulator::start_with(fast_config(), &[any_port()])
        .await
        .expect("emulator");
    let work = Workdir::new(&[emu.url()]);
    let url = emu.url();
    let fx = fixture(|c| c.yarn_endpoint = Some(url)).await;
    let spec = yarn_spec(fx.dir.path(), "yarn_python", None);
    let launch = request(spec, Some(work.path()), 60 * SECOND);
    let kernel = fx.backend.launch(launch).await.expect("launch");
    let app_id = app_id_of(&kernel);
    let record = kernel.process.record();
    assert!(emu.kill_app(&app_id), "yarn application -kill");
    let state = tokio::time::timeout(10 * SECOND, kernel.process.wait())
        .await
        .expect("wait ends");
    assert_eq!(
        state,
        ProcessState::Exited {
            code: None,
            signal: Some(9)
        }
    );
    assert_eq!(kernel.process.poll().await, state);
    assert!(kernel.process.interrupt().await.is_err());
    let err = fx.backend.reattach(&record).await.err();
    assert!(matches!(err, Some(Error::NotRunning(_))), "{err:?}");
    let after = shut_down(kernel, None).await;
    assert_eq!(after, state);
    finish(emu).await;
}

#[tokio::test]
async fn yarn_configuration_errors_fail_before_anything_runs() {
    #[track_caller]
    fn check(err: Option<Error>, fragment: &str) {
        let text = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(text.contains(fragment), "{fragment:?} not in {text:?}");
    }
    let root = tempfile::tempdir().expect("tempdir");
    let spec = yarn_spec(root.path(), "yarn_python", None);

    // No endpoint and no yarn-site.xml.
    let fx = fixture(|_| {}).await;
    check(
        fx.backend
            .launch(request(spec.clone(), None, 5 * SECOND))
            .await
            .err(),
        "no YARN ResourceManager configured",
    );
    // Kerberos has its place but is refused for now.
    let fx = fixture(|c| {
        c.yarn_endpoint = Some("http://127.0.0.1:1".into());
        c.security = resource_managers::yarn::YarnSecurity::Kerberos;
    })
    .await;
    check(
        fx.backend
            .launch(request(spec.clone(), None, 5 * SECOND))
            .await
            .err(),
        "Kerberos (SPNEGO)",
    );
    // A CA bundle that is not one.
    let bundle = root.path().join("ca.pem");
    std::fs::write(&bundle, "not a certificate").expect("bundle");
    let fx = fixture(|c| {
        c.yarn_endpoint = Some("https://127.0.0.1:1".into());
        c.ca_bundle = Some(bundle);
    })
    .await;
    check(
        fx.backend
            .launch(request(spec.clone(), None, 5 * SECOND))
            .await
            .err(),
        "CA bundle",
    );
    // yarn-site.xml without RM addresses.
    let conf = root.path().join("conf");
    std::fs::create_dir_all(&conf).expect("conf dir");
    std::fs::write(
        conf.join("yarn-site.xml"),
        "<configuration></configuration>",
    )
    .expect("site");
    let fx = fixture(|c| c.hadoop_conf_dir = Some(conf)).await;
    check(
        fx.backend
            .launch(request(spec.clone(), None, 5 * SECOND))
            .await
            .err(),
        "yarn.resourcemanager.webapp.address",
    );
    // EG's container-memory check against yarn.nodemanager.resource.memory-mb.
    let small = root.path().join("small");
    std::fs::create_dir_all(&small).expect("conf dir");
    std::fs::write(
        small.join("yarn-site.xml"),
        "<configuration>\
         <property><name>yarn.resourcemanager.webapp.address</name><value>127.0.0.1:1</value></property>\
         <property><name>yarn.nodemanager.resource.memory-mb</name><value>1024</value></property>\
         </configuration>",
    )
    .expect("site");
    let fx = fixture(|c| c.hadoop_conf_dir = Some(small)).await;
    let mut launch = request(spec.clone(), None, 5 * SECOND);
    launch
        .env
        .insert("KERNEL_EXECUTOR_MEMORY".into(), "2048".into());
    launch
        .env
        .insert("KERNEL_DRIVER_MEMORY".into(), "512".into());
    let err = fx.backend.launch(launch).await.err();
    assert!(matches!(err, Some(Error::Capacity(_))), "{err:?}");
    check(err, "Container Memory not sufficient");
    // No RM answers: nothing was started, the error names what was tried.
    let fx = fixture(|c| c.yarn_endpoint = Some("http://127.0.0.1:1".into())).await;
    let mut launch = request(spec, None, 5 * SECOND);
    launch.env.insert("KERNEL_QUEUE".into(), "default".into());
    launch.env.insert("KERNEL_NODE_LABEL".into(), String::new());
    check(
        fx.backend.launch(launch).await.err(),
        "No active YARN ResourceManager",
    );
    assert_eq!(fx.listener.pending_count(), 0);
}

/// A kernel under a "large" profile: `spark-submit` gets the profile's queue, driver and
/// executor settings, and the application lands in that queue of the RM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_yarn_kernel_under_a_large_profile_is_submitted_with_its_queue_and_executors() {
    let config = EmulatorConfig {
        queues: vec![
            tests::yarn::QueueSpec {
                name: "default".into(),
                capacity: 50.0,
            },
            tests::yarn::QueueSpec {
                name: "large".into(),
                capacity: 50.0,
            },
        ],
        ..fast_config()
    };
    let emu = YarnEmulator::start_with(config, &[any_port()])
        .await
        .expect("emulator");
    let work = Workdir::new(&[emu.url()]);
    let url = emu.url();
    let fx = fixture(|c| c.yarn_endpoint = Some(format!("{url}/ws/v1/cluster"))).await;
    let spec = yarn_spec(fx.dir.path(), "yarn_python", None);
    let mut launch = request(spec, Some(work.path()), 60 * SECOND);
    launch.placement.spark = resource_managers::SparkSettings {
        queue: Some("large".into()),
        driver_memory: Some("2g".into()),
        executor_memory: Some("8g".into()),
        executor_count: Some(4),
        executor_cores: Some(2),
    };
    let kernel_id = launch.kernel_id.clone();
    let kernel = fx.backend.launch(launch).await.expect("launch");
    let app = emu.app(&app_id_of(&kernel)).expect("the app");
    assert_eq!(
        app.queue, "large",
        "the application is in the profile's queue"
    );
    let log = std::fs::read_to_string(
        fx.dir
            .path()
            .join("logs")
            .join(format!("kernel-{kernel_id}.log")),
    )
    .expect("the submit command's log");
    for (name, value) in [
        ("queue", "large"),
        ("driverMemory", "2g"),
        ("executorMemory", "8g"),
        ("numExecutors", "4"),
        ("executorCores", "2"),
    ] {
        assert!(
            log.lines()
                .any(|l| l.split_whitespace().eq([name, value].into_iter())),
            "spark-submit got {name} {value}:\n{log}"
        );
    }
    let client = KernelClient::connect(&kernel.connection, &SocketOptions::default())
        .await
        .ok();
    shut_down(kernel, client).await;
    finish(emu).await;
}
