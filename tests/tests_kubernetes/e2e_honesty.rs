//! The emulator kept honest: the real kubectl and the official Python `kubernetes` client
//! (both over TLS with the bearer token) create, get, list, watch and delete through it, and see
//! its errors as they see a real API server's.

use std::path::Path;
use std::time::Duration;

use crate::{Cluster, assert_contains};

async fn kubectl(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new("kubectl");
    cmd.args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", kubeconfig.parent().unwrap_or(Path::new("/tmp")))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .expect("kubectl runs (Debian's kubernetes-client; cargo xtask setup)");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).await.expect("write stdin");
    }
    drop(input);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("kubectl finished")
        .expect("kubectl output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const POD: &str = r#"{"apiVersion": "v1", "kind": "Pod",
 "metadata": {"name": "hello", "labels": {"kernel_id": "k-kubectl", "component": "kernel"}},
 "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "kernel-py",
   "command": ["/bin/sh", "-c", "echo hello from $POD_NAME; sleep 60"],
   "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]}]}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_kubectl_against_the_emulator() {
    let cluster = Cluster::start().await;
    let kc = cluster.kubeconfig.as_path();
    let (ok, out, err) = kubectl(kc, &["version", "-o", "json"], None).await;
    assert!(ok, "{out}{err}");
    assert_contains(&out, "v1.32.0-emulator");
    let (ok, out, err) = kubectl(kc, &["create", "--validate=false", "-f", "-"], Some(POD)).await;
    assert!(ok, "{out}{err}");
    assert_contains(&out, "pod/hello created");
    let (ok, _, err) = kubectl(kc, &["create", "--validate=false", "-f", "-"], Some(POD)).await;
    assert!(!ok);
    assert_contains(&err, "AlreadyExists");
    // Polled rather than `kubectl wait --for=jsonpath=...`: Debian's kubectl (1.20, which
    // `cargo xtask setup` installs where no kubectl is) predates that condition.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (ok, out, err) = kubectl(
            kc,
            &["get", "pod", "hello", "-o", "jsonpath={.status.phase}"],
            None,
        )
        .await;
        assert!(ok, "{out}{err}");
        if out.trim() == "Running" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "pod/hello still {out:?} after 20 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let (ok, out, err) = kubectl(
        kc,
        &[
            "get",
            "pods",
            "-l",
            "kernel_id=k-kubectl,component=kernel",
            "-o",
            "jsonpath={.items[*].metadata.name} {.items[*].status.podIP}",
        ],
        None,
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "hello 127.0.0.1");
    let (ok, out, _) = kubectl(kc, &["get", "pods"], None).await;
    assert!(ok);
    assert_contains(&out, "Running");
    let (_, out, _) = kubectl(kc, &["logs", "hello"], None).await;
    assert_contains(&out, "hello from hello");
    let (ok, out, err) = kubectl(kc, &["get", "pod", "nope"], None).await;
    assert!(!ok, "{out}");
    assert_contains(&err, "pods \"nope\" not found");
    // (kubectl's imperative `create namespace` sends protobuf, which the emulator does not read;
    // a manifest goes as JSON.)
    let bad_ns = r#"{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "Bad_Name"}}"#;
    let (ok, out, err) =
        kubectl(kc, &["create", "--validate=false", "-f", "-"], Some(bad_ns)).await;
    assert!(!ok, "{out}");
    assert_contains(&err, "is invalid");
    let (ok, out, err) = kubectl(
        kc,
        &[
            "delete",
            "pod",
            "hello",
            "--grace-period=0",
            "--force",
            "--wait=true",
        ],
        None,
    )
    .await;
    assert!(ok, "{out}{err}");
    let (ok, out, _) = kubectl(kc, &["get", "pods", "-o", "name"], None).await;
    assert!(ok);
    assert_eq!(out.trim(), "");
    // Without the token: 401.
    let anon = cluster.dir.path().join("anonymous");
    let text = std::fs::read_to_string(kc)
        .expect("kubeconfig")
        .replace(crate::TOKEN, "wrong");
    std::fs::write(&anon, text).expect("write");
    let (ok, _, err) = kubectl(&anon, &["get", "pods"], None).await;
    assert!(!ok);
    assert_contains(&err, "Unauthorized");
    cluster.assert_nothing_left(None).await;
}

const PYTHON: &str = r#"
import json, sys
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException
config.load_kube_config(config_file=sys.argv[1])
v1 = client.CoreV1Api()
out = {}
ns = v1.create_namespace({"metadata": {"name": "py-ns", "labels": {"app": "t"}}})
out["ns"] = ns.status.phase
pod = {"metadata": {"name": "p", "labels": {"kernel_id": "k-py", "component": "kernel"}},
       "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "kernel-py",
                "command": ["/bin/sh", "-c", "sleep 60"]}]}}
v1.create_namespaced_pod("py-ns", pod)
try:
    v1.create_namespaced_pod("py-ns", pod)
except ApiException as e:
    out["duplicate"] = [e.status, json.loads(e.body)["reason"]]
phases = []
w = watch.Watch()
for ev in w.stream(v1.list_namespaced_pod, "py-ns", label_selector="kernel_id=k-py,component=kernel", timeout_seconds=20):
    phases.append([ev["type"], ev["object"].status.phase])
    if ev["object"].status.phase == "Running":
        out["ip"] = ev["object"].status.pod_ip
        w.stop()
out["phases"] = phases
out["listed"] = [p.metadata.name for p in v1.list_namespaced_pod("py-ns", label_selector="component=kernel").items]
rb = client.RbacAuthorizationV1Api().create_namespaced_role_binding("py-ns", {
    "metadata": {"name": "kernel-controller"},
    "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": "py-ns"}],
    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kernel-controller"}})
out["rolebinding"] = rb.metadata.name
v1.create_namespaced_config_map("py-ns", {"metadata": {"name": "cm"}, "data": {"a": "b"}})
out["configmap"] = v1.read_namespaced_config_map("cm", "py-ns").data
try:
    v1.create_namespaced_pod("py-ns", {"metadata": {"name": "q"}, "spec": {"containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": "lots"}}}]}})
except ApiException as e:
    out["invalid"] = [e.status, json.loads(e.body)["details"]["causes"][0]["field"]]
v1.delete_namespaced_pod("p", "py-ns", grace_period_seconds=0, propagation_policy="Background")
try:
    v1.read_namespaced_pod("p", "py-ns")
except ApiException as e:
    out["deleted"] = e.status
v1.delete_namespace("py-ns")
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_python_client_against_the_emulator() {
    let cluster = Cluster::start().await;
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(crate::venv().join("bin/python"))
            .arg("-c")
            .arg(PYTHON)
            .arg(&cluster.kubeconfig)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("python finished")
    .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("json");
    assert_eq!(v["ns"], "Active");
    assert_eq!(v["duplicate"], serde_json::json!([409, "AlreadyExists"]));
    assert_eq!(v["ip"], "127.0.0.1");
    assert_eq!(
        v["phases"]
            .as_array()
            .and_then(|p| p.last())
            .map(|l| l[1].clone()),
        Some("Running".into())
    );
    assert_eq!(v["listed"], serde_json::json!(["p"]));
    assert_eq!(v["rolebinding"], "kernel-controller");
    assert_eq!(v["configmap"], serde_json::json!({"a": "b"}));
    assert_eq!(
        v["invalid"],
        serde_json::json!([422, "spec.containers[0].resources.requests[cpu]"])
    );
    assert_eq!(v["deleted"], 404);
    cluster.assert_nothing_left(Some("py-ns")).await;
}
