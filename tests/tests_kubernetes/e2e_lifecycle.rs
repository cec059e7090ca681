//! A kernel's whole life through the backend: GP's kernelspec, EG's launcher path (GP's
//! `launch_kubernetes.py`) and the native path, a per-kernel namespace, restart, re-attach,
//! in-cluster configuration.

use std::time::{Duration, Instant};

use jupyter_protocol::{KernelClient, SocketOptions};
use resource_managers::kubernetes::{ClusterConfig, KubernetesResourceManager, LaunchMode};
use resource_managers::{KernelProcess, LaunchedKernel, ProcessState, ResourceManager};

use crate::{Cluster, SECOND, assert_contains};

/// `time.sleep(30)` interrupted through the backend after a second ends in KeyboardInterrupt.
async fn interrupt_a_sleeping_cell(
    mut client: KernelClient,
    process: &dyn KernelProcess,
) -> KernelClient {
    let running = tokio::spawn(async move {
        let outcome = client
            .execute("import time; time.sleep(30)", 60 * SECOND)
            .await;
        (client, outcome)
    });
    tokio::time::sleep(SECOND).await;
    process.interrupt().await.expect("interrupt");
    let (client, outcome) = tokio::time::timeout(20 * SECOND, running)
        .await
        .expect("interrupted in time")
        .expect("join");
    assert_eq!(
        outcome
            .expect("execute reply")
            .error
            .map(|e| e.ename)
            .as_deref(),
        Some("KeyboardInterrupt")
    );
    client
}

async fn connect(kernel: &LaunchedKernel) -> KernelClient {
    let mut client = KernelClient::connect(&kernel.connection, &SocketOptions::default())
        .await
        .expect("connect");
    assert_eq!(
        client
            .kernel_info(60 * SECOND)
            .await
            .expect("kernel_info")
            .status,
        "ok"
    );
    client
}

async fn run(client: &mut KernelClient, code: &str) -> String {
    client
        .execute(code, 30 * SECOND)
        .await
        .expect("execute")
        .stdout
        .trim()
        .to_owned()
}

/// Shutdown as the gateway does it: shutdown_request, the listener told, terminate, cleanup.
async fn shut_down(mut client: KernelClient, kernel: LaunchedKernel) {
    client.shutdown(false, 5 * SECOND).await.expect("shutdown");
    drop(client);
    kernel.process.shutdown_requested().await;
    let state = kernel
        .process
        .terminate(5 * SECOND)
        .await
        .expect("terminate");
    assert!(matches!(state, ProcessState::Exited { .. }), "{state:?}");
    kernel.process.cleanup(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_gp_launcher_per_kernel_namespace_restart_shutdown() {
    let started = Instant::now();
    let cluster = Cluster::start().await;
    let backend = cluster.backend(LaunchMode::Launcher);
    let kernel_id = uuid::Uuid::new_v4().to_string();
    let request = cluster.request(&kernel_id, &[], 60 * SECOND);
    let kernel = backend
        .launch(request.clone())
        .await
        .expect("launch through launch_kubernetes.py");
    let launched_in = started.elapsed();
    let pod_name = format!("alice-{kernel_id}");

    // The pod: GP's template, in its own namespace with the RoleBinding, GP's labels.
    let pods = cluster.emu.pods();
    assert_eq!(pods.len(), 1, "{pods:?}");
    let pod = &pods[0];
    assert_eq!(
        (pod.namespace.as_str(), pod.name.as_str()),
        (pod_name.as_str(), pod_name.as_str())
    );
    assert_eq!(pod.phase(), "Running");
    let labels = &pod.object["metadata"]["labels"];
    assert_eq!(labels["kernel_id"], kernel_id.as_str());
    assert_eq!(labels["component"], "kernel");
    assert_eq!(labels["source"], "kernel-pod.yaml");
    assert_eq!(pod.object["spec"]["securityContext"]["runAsUser"], 1000);
    assert_eq!(pod.object["spec"]["securityContext"]["runAsGroup"], 100);
    let env = pod.object["spec"]["containers"][0]["env"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let has = |k: &str| env.iter().any(|e| e["name"] == k);
    for k in [
        "RESPONSE_ADDRESS",
        "PUBLIC_KEY",
        "PORT_RANGE",
        "KERNEL_ID",
        "KERNEL_NAMESPACE",
        "KERNEL_USERNAME",
    ] {
        assert!(has(k), "{k} not in the pod's env");
    }
    assert!(cluster.emu.namespaces().contains(&pod_name));
    let bindings = cluster.emu.objects("rolebindings");
    assert!(
        bindings.iter().any(|(ns, name, rb)| ns == &pod_name
            && name == "cluster-admin"
            && rb["subjects"][0]["name"] == "default"),
        "{bindings:?}"
    );
    assert_eq!(kernel.connection.ip, "127.0.0.1");
    let record = kernel.process.record();
    assert_eq!(record.process["kernel_ns"], pod_name.as_str());
    assert_eq!(record.process["delete_ns"], true);

    let mut client = connect(&kernel).await;
    assert_eq!(run(&mut client, "print(6 * 7)").await, "42");
    let mut client = interrupt_a_sleeping_cell(client, kernel.process.as_ref()).await;
    assert_eq!(
        run(&mut client, "print('after interrupt')").await,
        "after interrupt"
    );
    assert_eq!(kernel.process.poll().await, ProcessState::Running);

    // Restart as the gateway does: terminate keeping what a relaunch reuses, launch again.
    client
        .shutdown(true, 5 * SECOND)
        .await
        .expect("shutdown for restart");
    drop(client);
    kernel.process.shutdown_requested().await;
    kernel
        .process
        .terminate(5 * SECOND)
        .await
        .expect("terminate for restart");
    kernel.process.cleanup(true).await;
    assert!(
        cluster.emu.namespaces().contains(&pod_name),
        "a restart keeps the namespace"
    );
    let kernel = backend.launch(request).await.expect("relaunch");
    let mut client = connect(&kernel).await;
    assert_eq!(run(&mut client, "print('restarted')").await, "restarted");
    assert_eq!(cluster.emu.pods().len(), 1);

    shut_down(client, kernel).await;
    cluster.assert_nothing_left(Some(&pod_name)).await;
    eprintln!(
        "launcher path: first launch {launched_in:?}, whole test {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_native_shared_namespace_reattach_and_in_cluster_config() {
    let started = Instant::now();
    let cluster = Cluster::start().await;
    // In-cluster configuration: the service-account files and the service host and port.
    let account = cluster.dir.path().join("serviceaccount");
    std::fs::create_dir_all(&account).expect("account dir");
    std::fs::write(account.join("token"), crate::TOKEN).expect("token");
    std::fs::write(account.join("ca.crt"), cluster.emu.ca_pem().expect("tls")).expect("ca");
    std::fs::write(account.join("namespace"), "default").expect("namespace");
    let port = cluster
        .emu
        .url()
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_owned();
    let mut config = cluster.config(LaunchMode::Native);
    config.cluster =
        ClusterConfig::in_cluster("127.0.0.1", &port, &account).map_err(|e| e.to_string());
    config.shared_namespace = true;
    config.namespace = "default".into();
    let backend = KubernetesResourceManager::new(config.clone());

    let kernel_id = uuid::Uuid::new_v4().to_string();
    let request = cluster.request(
        &kernel_id,
        &[("KERNEL_CPUS", "500m"), ("KERNEL_MEMORY_LIMIT", "1Gi")],
        60 * SECOND,
    );
    let kernel = backend.launch(request).await.expect("native launch");
    let launched_in = started.elapsed();
    let pods = cluster.emu.pods();
    assert_eq!(pods.len(), 1, "{pods:?}");
    let pod = &pods[0].object;
    assert_eq!(pods[0].namespace, "default");
    assert_eq!(
        pod["metadata"]["labels"]["source"], "kernel-pod.yaml",
        "GP's template was rendered"
    );
    let resources = &pod["spec"]["containers"][0]["resources"];
    assert_eq!(resources["requests"]["cpu"], "500m");
    assert_eq!(resources["limits"]["memory"], "1Gi");
    assert!(
        cluster.emu.objects("rolebindings").is_empty(),
        "no RoleBinding in a shared namespace"
    );

    let mut client = connect(&kernel).await;
    assert_eq!(run(&mut client, "x = 21; print(x * 2)").await, "42");

    // Re-attach from the record, as a restarted gateway does.
    let record = kernel.process.record();
    kernel.process.detach();
    drop(kernel);
    let fresh = KubernetesResourceManager::new(config);
    let again = fresh.reattach(&record).await.expect("reattach");
    assert_eq!(again.process.poll().await, ProcessState::Running);
    assert_eq!(
        run(&mut client, "print(x)").await,
        "21",
        "the same kernel, state kept"
    );
    shut_down(client, again).await;
    cluster.assert_nothing_left(None).await;
    assert!(
        cluster.emu.namespaces().contains(&"default".to_owned()),
        "a shared namespace stays"
    );

    // A kernel whose pod is gone cannot be re-attached.
    let err = fresh
        .reattach(&record)
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert_contains(&err, "is gone");
    eprintln!(
        "native path: launch {launched_in:?}, whole test {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_deleted_pod_is_a_dead_kernel() {
    let cluster = Cluster::start().await;
    let backend = cluster.backend(LaunchMode::Native);
    let kernel_id = uuid::Uuid::new_v4().to_string();
    let kernel = backend
        .launch(cluster.request(&kernel_id, &[], 60 * SECOND))
        .await
        .expect("launch");
    let pod = cluster.emu.pods().pop().expect("a pod");
    let waiter = tokio::time::timeout(Duration::from_secs(15), kernel.process.wait());
    assert!(cluster.emu.vanish(&pod.namespace, &pod.name));
    let state = waiter.await.expect("wait saw the pod go");
    assert!(matches!(state, ProcessState::Exited { .. }), "{state:?}");
    assert!(matches!(
        kernel.process.poll().await,
        ProcessState::Exited { .. }
    ));
    kernel.process.terminate(SECOND).await.expect("terminate");
    kernel.process.cleanup(false).await;
    cluster.assert_nothing_left(Some(&pod.namespace)).await;
}
