//! Every injected fault (image pull, unschedulable, a failing container, a crash loop, a pod
//! that vanishes) ends the launch with its real reason well before the deadline and
//! leaves nothing behind (pod, namespace, RoleBinding, processes); bad `KERNEL_*` values are
//! refused before anything reaches the API server.

use std::time::{Duration, Instant};

use resource_managers::kubernetes::LaunchMode;
use resource_managers::{Error, ResourceManager};

use crate::{Cluster, SECOND, assert_contains, gp_template};

/// A fault: what, the client's `KERNEL_*` values, the reason expected.
type FaultCase = (
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static str,
);

/// A bad value: the client's `KERNEL_*` values, the message expected, whether it is a 400.
type BadCase<'a> = (&'a [(&'a str, &'a str)], &'a str, bool);

/// The launch deadline; every fault must be reported well within it.
const DEADLINE: Duration = Duration::from_secs(30);

async fn failing_launch(
    cluster: &Cluster,
    mode: LaunchMode,
    env: &[(&str, &str)],
) -> (Error, Duration, String) {
    let backend = cluster.backend(mode);
    let kernel_id = uuid::Uuid::new_v4().to_string();
    let started = Instant::now();
    let result = backend
        .launch(cluster.request(&kernel_id, env, DEADLINE))
        .await;
    let took = started.elapsed();
    let Err(err) = result else {
        panic!("launch with {env:?} succeeded");
    };
    (err, took, format!("alice-{kernel_id}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_faults_give_their_reason_before_the_deadline() {
    let cluster = Cluster::start().await;
    let cases: [FaultCase; 5] = [
        (
            "image pull",
            &[("KERNEL_IMAGE", "registry.example/no-such-image:1")],
            "ImagePullBackOff",
        ),
        (
            "unschedulable (cpu)",
            &[("KERNEL_CPUS", "64")],
            "Insufficient cpu",
        ),
        (
            "unschedulable (taint)",
            &[("KERNEL_IMAGE", "kernel-py-unschedulable")],
            "Unschedulable",
        ),
        (
            "container fails",
            &[("KERNEL_IMAGE", "kernel-py-fails")],
            "OOMKilled",
        ),
        (
            "pod vanishes",
            &[("KERNEL_IMAGE", "kernel-py-vanishes")],
            "was deleted during the launch",
        ),
    ];
    for (what, env, reason) in cases {
        let (err, took, namespace) = failing_launch(&cluster, LaunchMode::Native, env).await;
        let text = err.to_string();
        eprintln!("{what}: {took:?}: {text}");
        assert_contains(&text, reason);
        assert!(took < 10 * SECOND, "{what} took {took:?}");
        if what.starts_with("unschedulable") {
            assert!(matches!(err, Error::Capacity(_)), "{what}: {err:?}");
        } else {
            assert!(
                matches!(err, Error::ExitedDuringLaunch { .. }),
                "{what}: {err:?}"
            );
        }
        cluster.assert_nothing_left(Some(&namespace)).await;
    }
    // A container that keeps failing under `restartPolicy: Always` (a profile's template) is
    // restarted with back-off: CrashLoopBackOff ends the launch, the pod deleted.
    let text = std::fs::read_to_string(gp_template()).expect("GP's template");
    let always = text.replace("restartPolicy: Never", "restartPolicy: Always");
    assert_ne!(always, text, "GP's template sets restartPolicy");
    let template = cluster.dir.path().join("always-pod.yaml.j2");
    std::fs::write(&template, always).expect("write the template");
    let backend = cluster.backend(LaunchMode::Native);
    let kernel_id = uuid::Uuid::new_v4().to_string();
    let mut request = cluster.request(&kernel_id, &[("KERNEL_IMAGE", "kernel-py-fails")], DEADLINE);
    request.placement.kubernetes.pod_template = Some(template);
    let started = Instant::now();
    let Err(err) = backend.launch(request).await else {
        panic!("a crash-looping pod launched");
    };
    let took = started.elapsed();
    eprintln!("crash loop: {took:?}: {err}");
    assert_contains(&err.to_string(), "CrashLoopBackOff");
    assert!(matches!(err, Error::ExitedDuringLaunch { .. }), "{err:?}");
    assert!(took < 10 * SECOND, "the crash loop took {took:?}");
    cluster
        .assert_nothing_left(Some(&format!("alice-{kernel_id}")))
        .await;

    // A slow start is not a fault: the kernel comes up after it.
    let backend = cluster.backend(LaunchMode::Native);
    let kernel_id = uuid::Uuid::new_v4().to_string();
    let started = Instant::now();
    let kernel = backend
        .launch(cluster.request(&kernel_id, &[("KERNEL_IMAGE", "kernel-py-slow")], DEADLINE))
        .await
        .expect("a slow start still starts");
    assert!(started.elapsed() >= Duration::from_millis(1500));
    kernel.process.terminate(SECOND).await.expect("terminate");
    kernel.process.cleanup(false).await;
    cluster
        .assert_nothing_left(Some(&format!("alice-{kernel_id}")))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_launcher_path_faults_and_deadline() {
    let cluster = Cluster::start().await;
    // Through GP's launch_kubernetes.py too.
    let (err, took, namespace) = failing_launch(
        &cluster,
        LaunchMode::Launcher,
        &[("KERNEL_IMAGE", "kernel-py-fails")],
    )
    .await;
    assert_contains(&err.to_string(), "OOMKilled");
    assert!(took < 10 * SECOND, "{took:?}");
    cluster.assert_nothing_left(Some(&namespace)).await;

    // A launch that runs out of time says so, with the pod's state, and cleans up.
    let backend = cluster.backend(LaunchMode::Native);
    let kernel_id = uuid::Uuid::new_v4().to_string();
    let started = Instant::now();
    let err = backend
        .launch(cluster.request(
            &kernel_id,
            &[("KERNEL_IMAGE", "kernel-py-slow")],
            Duration::from_millis(800),
        ))
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(started.elapsed() < 5 * SECOND);
    assert_contains(
        &err,
        "launch timeout due to: Waited too long (0.8s) to get connection file",
    );
    assert_contains(&err, "is Pending (ContainerCreating)");
    cluster
        .assert_nothing_left(Some(&format!("alice-{kernel_id}")))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_bad_values_are_refused_before_the_api() {
    let cluster = Cluster::start().await;
    let long_user = "a".repeat(40);
    let cases: [BadCase<'_>; 9] = [
        (
            &[("KERNEL_NAMESPACE", "Bad_NS")],
            "KERNEL_NAMESPACE 'Bad_NS' is not a valid Kubernetes name",
            true,
        ),
        (
            &[("KERNEL_NAMESPACE", "a\nb")],
            "KERNEL_NAMESPACE 'a\\nb' is not a valid",
            true,
        ),
        (
            &[("KERNEL_CPUS", "lots")],
            "KERNEL_CPUS 'lots' is not a valid Kubernetes quantity",
            true,
        ),
        (
            &[("KERNEL_MEMORY_LIMIT", "1: [x]")],
            "KERNEL_MEMORY_LIMIT",
            true,
        ),
        (
            &[("KERNEL_IMAGE", "img\"\nkind: Secret")],
            "KERNEL_IMAGE",
            true,
        ),
        (
            &[("KERNEL_USERNAME", long_user.as_str())],
            "must be 1 to 63 characters",
            true,
        ),
        (
            &[("KERNEL_VOLUMES", "- just a string")],
            "KERNEL_VOLUMES must be a YAML list of mappings",
            true,
        ),
        (
            &[("KERNEL_UID", "0")],
            "Kernel's UID value of '0' has been denied via EG_PROHIBITED_UIDS!",
            false,
        ),
        (
            &[("KERNEL_GID", "x")],
            "Invalid KERNEL_GID value 'x': not a valid integer!",
            false,
        ),
    ];
    let backend = cluster.backend(LaunchMode::Native);
    for (env, message, bad_request) in cases {
        let kernel_id = uuid::Uuid::new_v4().to_string();
        let err = backend
            .launch(cluster.request(&kernel_id, env, DEADLINE))
            .await
            .expect_err("refused");
        assert_contains(&err.to_string(), message);
        if bad_request {
            assert!(matches!(err, Error::InvalidRequest(_)), "{env:?}: {err:?}");
        } else {
            assert!(matches!(err, Error::Unauthorized(_)), "{env:?}: {err:?}");
        }
    }
    // A client namespace that does not exist is a 400 too; nothing was created.
    let kernel_id = uuid::Uuid::new_v4().to_string();
    let err = backend
        .launch(cluster.request(&kernel_id, &[("KERNEL_NAMESPACE", "nowhere")], DEADLINE))
        .await
        .expect_err("refused");
    assert!(matches!(err, Error::InvalidRequest(_)), "{err:?}");
    assert_contains(&err.to_string(), "namespace 'nowhere' does not exist");
    assert_eq!(
        cluster.emu.namespaces().len(),
        3,
        "{:?}",
        cluster.emu.namespaces()
    );
    cluster.assert_nothing_left(None).await;
}
