//! Kernel profiles on pods: a profile's node selector, tolerations and pod template reach the pod
//! the gateway renders (native path), its resources become requests and limits, a bad value is a
//! 400 naming the profile's field before anything reaches the API, and a launcher-made pod (which
//! the gateway cannot change) is refused with the reason.

use resource_managers::kubernetes::LaunchMode;
use resource_managers::{Error, PodPlacement, ResourceManager, Toleration};

use crate::{Cluster, SECOND, assert_contains, gp_template};

/// A GPU profile's pod settings, with its own template (GP's plus a label).
fn gpu_placement(cluster: &Cluster) -> PodPlacement {
    let text = std::fs::read_to_string(gp_template()).expect("GP's template");
    let marked = text.replace(
        "    source: kernel-pod.yaml\n",
        "    source: kernel-pod.yaml\n    profile-template: gpu\n",
    );
    assert_ne!(marked, text, "GP's template has its source label");
    let path = cluster.dir.path().join("gpu-pod.yaml.j2");
    std::fs::write(&path, marked).expect("write the profile's template");
    PodPlacement {
        // The emulated node's own label: the scheduler matches it.
        node_selector: [("kubernetes.io/os".to_owned(), "linux".to_owned())].into(),
        tolerations: vec![Toleration {
            key: Some("nvidia.com/gpu".into()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Toleration::default()
        }],
        pod_template: Some(path),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_kubernetes_profile_places_the_pod() {
    let cluster = Cluster::start().await;
    let backend = cluster.backend(LaunchMode::Native);
    let kernel_id = uuid::Uuid::new_v4().to_string();
    // What a profile with resources = { cpus = 1, memory = "1G" } adds (Profile::kernel_env).
    let mut request = cluster.request(
        &kernel_id,
        &[
            ("KERNEL_CPUS", "1"),
            ("KERNEL_CPUS_LIMIT", "1"),
            ("KERNEL_MEMORY", "1073741824"),
            ("KERNEL_MEMORY_LIMIT", "1073741824"),
        ],
        60 * SECOND,
    );
    request.placement.kubernetes = gpu_placement(&cluster);
    let kernel = backend.launch(request).await.expect("native launch");
    let pods = cluster.emu.pods();
    assert_eq!(pods.len(), 1, "{pods:?}");
    let pod = &pods[0].object;
    assert_eq!(pod["metadata"]["labels"]["profile-template"], "gpu");
    assert_eq!(
        pod["spec"]["nodeSelector"],
        serde_json::json!({"kubernetes.io/os": "linux"})
    );
    assert_eq!(
        pod["spec"]["tolerations"],
        serde_json::json!([{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])
    );
    let resources = &pod["spec"]["containers"][0]["resources"];
    assert_eq!(resources["requests"]["cpu"], "1");
    assert_eq!(resources["limits"]["cpu"], "1");
    assert_eq!(resources["requests"]["memory"], "1073741824");
    assert_eq!(resources["limits"]["memory"], "1073741824");
    let namespace = pods[0].namespace.clone();
    kernel.process.terminate(SECOND).await.expect("terminate");
    kernel.process.cleanup(false).await;
    cluster.assert_nothing_left(Some(&namespace)).await;

    // A selector no node matches reaches the scheduler, whose reason is the launch's failure.
    let mut request = cluster.request(&uuid::Uuid::new_v4().to_string(), &[], 60 * SECOND);
    request.placement.kubernetes = PodPlacement {
        node_selector: [("disktype".to_owned(), "ssd".to_owned())].into(),
        ..PodPlacement::default()
    };
    let err = backend.launch(request).await.expect_err("unschedulable");
    assert_contains(
        &err.to_string(),
        "didn't match Pod's node affinity/selector",
    );
    cluster.assert_nothing_left(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_kubernetes_bad_profile_values_are_refused_before_the_api() {
    let cluster = Cluster::start().await;
    let backend = cluster.backend(LaunchMode::Native);
    let good = gpu_placement(&cluster);
    let mut hostile_value = good.clone();
    hostile_value
        .node_selector
        .insert("disktype".into(), "ssd\"\nkind: Secret".into());
    let mut hostile_key = good.clone();
    hostile_key
        .node_selector
        .insert("a: {b}".into(), "c".into());
    let mut bad_effect = good.clone();
    bad_effect.tolerations[0].effect = Some("NoSchedule\n- key: x".into());
    let cases = [
        (hostile_value, "kubernetes.node_selector.disktype"),
        (hostile_key, "kubernetes.node_selector key"),
        (bad_effect, "kubernetes.tolerations[0].effect"),
    ];
    for (placement, field) in cases {
        let mut request = cluster.request(&uuid::Uuid::new_v4().to_string(), &[], 30 * SECOND);
        request.placement.kubernetes = placement;
        let err = backend.launch(request).await.expect_err("refused");
        assert!(matches!(err, Error::InvalidRequest(_)), "{err:?}");
        assert_contains(&err.to_string(), field);
    }
    // GP's launcher renders its own pod: a profile's pod settings cannot reach it.
    let launcher = cluster.backend(LaunchMode::Launcher);
    let mut request = cluster.request(&uuid::Uuid::new_v4().to_string(), &[], 30 * SECOND);
    request.placement.kubernetes = good;
    let err = launcher.launch(request).await.expect_err("refused");
    assert_contains(&err.to_string(), "EG_KUBERNETES_LAUNCH=native");
    assert!(cluster.emu.pods().is_empty(), "{:?}", cluster.emu.pods());
    cluster.assert_nothing_left(None).await;
}
