//! The emulator's scheduler and kubelet: one task per pod that schedules it on the single
//! node, "pulls" its image (looks it up in [`super::EmulatorConfig::images`]), runs its first
//! container as a local process group with the pod's environment, and reports the phase.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio::sync::Notify;

use super::state::{EventType, Key, Shared, now_rfc3339, parse_quantity};
use super::{FAULT_ANNOTATION, Fault, NODE_NAME};

pub(crate) use test_support::procfs::{group_alive, signal_group};

/// The pod's current object, if it still exists with this uid.
fn current(shared: &Shared, key: &Key, uid: &str) -> Option<Value> {
    let st = shared.lock();
    st.objects
        .get(key)
        .filter(|p| p["metadata"]["uid"].as_str() == Some(uid))
        .cloned()
}

/// Applies `change` to the pod's status (if it still exists) and records MODIFIED.
fn update(shared: &Shared, key: &Key, uid: &str, change: impl FnOnce(&mut Value)) -> bool {
    let mut st = shared.lock();
    let Some(mut pod) = st
        .objects
        .get(key)
        .filter(|p| p["metadata"]["uid"].as_str() == Some(uid))
        .cloned()
    else {
        return false;
    };
    change(&mut pod);
    st.put(&shared.events_tx, key.clone(), pod, EventType::Modified);
    true
}

/// Records a core/v1 Event about the pod.
fn record_event(shared: &Shared, key: &Key, uid: &str, kind: &str, reason: &str, message: &str) {
    let mut st = shared.lock();
    let n = st.next_rv();
    let name = format!("{}.{n:x}", key.name);
    let now = now_rfc3339();
    let event_uid = st.uid();
    let event = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": key.namespace, "uid": event_uid, "creationTimestamp": now},
        "involvedObject": {"kind": "Pod", "namespace": key.namespace, "name": key.name, "uid": uid, "apiVersion": "v1"},
        "reason": reason,
        "message": message,
        "type": kind,
        "count": 1,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "source": {"component": "kubelet", "host": NODE_NAME},
    });
    let ev_key = Key {
        plural: "events",
        namespace: key.namespace.clone(),
        name,
    };
    st.put(&shared.events_tx, ev_key, event, EventType::Added);
}

fn set_condition(
    pod: &mut Value,
    kind: &str,
    status: &str,
    reason: Option<&str>,
    message: Option<&str>,
) {
    let now = now_rfc3339();
    let mut cond =
        json!({"type": kind, "status": status, "lastProbeTime": null, "lastTransitionTime": now});
    if let Some(r) = reason {
        cond["reason"] = json!(r);
    }
    if let Some(m) = message {
        cond["message"] = json!(m);
    }
    let conds = pod["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut conds: Vec<Value> = conds.into_iter().filter(|c| c["type"] != kind).collect();
    conds.push(cond);
    pod["status"]["conditions"] = Value::Array(conds);
}

fn container_status(
    pod: &Value,
    state: Value,
    ready: bool,
    restarts: u64,
    last: Option<Value>,
) -> Value {
    let c = &pod["spec"]["containers"][0];
    let mut s = json!({
        "name": c["name"],
        "image": c["image"],
        "imageID": "",
        "ready": ready,
        "restartCount": restarts,
        "started": state.get("running").is_some(),
        "state": state,
        "lastState": last.unwrap_or_else(|| json!({})),
    });
    if ready {
        s["containerID"] = json!(format!(
            "emulator://{}",
            pod["metadata"]["uid"].as_str().unwrap_or_default()
        ));
    }
    s
}

/// The fault the pod asks for: its annotation, else its image's.
fn fault_of(shared: &Shared, pod: &Value) -> Option<Fault> {
    if let Some(text) = pod["metadata"]["annotations"][FAULT_ANNOTATION].as_str() {
        return Fault::parse(text);
    }
    let image = pod["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap_or_default();
    shared
        .config
        .images
        .get(image)
        .and_then(|i| i.fault.clone())
}

/// Why the pod does not fit the node, if it does not.
fn unschedulable_reason(shared: &Shared, pod: &Value) -> Option<String> {
    let cfg = &shared.config;
    let mut insufficient = Vec::new();
    let mut cpu = 0.0;
    let mut memory = 0.0;
    let mut gpus = 0.0;
    for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
        let q = |k: &str| {
            let r = &c["resources"]["requests"][k];
            let l = &c["resources"]["limits"][k];
            let text = |v: &Value| match v {
                Value::String(s) => parse_quantity(s),
                Value::Number(n) => n.as_f64(),
                _ => None,
            };
            text(r).or_else(|| text(l)).unwrap_or(0.0)
        };
        cpu += q("cpu");
        memory += q("memory");
        gpus += q("nvidia.com/gpu");
    }
    if cpu * 1000.0 > cfg.node_cpu_millis as f64 {
        insufficient.push("Insufficient cpu");
    }
    if memory > cfg.node_memory_bytes as f64 {
        insufficient.push("Insufficient memory");
    }
    if gpus > cfg.node_gpus as f64 {
        insufficient.push("Insufficient nvidia.com/gpu");
    }
    let selector_ok = pod["spec"]["nodeSelector"].as_object().is_none_or(|sel| {
        sel.iter()
            .all(|(k, v)| cfg.node_labels.get(k).map(String::as_str) == v.as_str())
    });
    let mut reasons: Vec<String> = insufficient.iter().map(|s| format!("1 {s}")).collect();
    if !selector_ok {
        reasons.push("1 node(s) didn't match Pod's node affinity/selector".into());
    }
    if matches!(fault_of(shared, pod), Some(Fault::Unschedulable)) && reasons.is_empty() {
        reasons.push("1 node(s) had untolerated taint {node.kubernetes.io/unschedulable: }".into());
    }
    if reasons.is_empty() {
        None
    } else {
        Some(format!(
            "0/1 nodes are available: {}. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling.",
            reasons.join(", ")
        ))
    }
}

/// Sleeps `d` unless the pod is stopped first; true if stopped.
async fn stopped_during(stop: &Notify, d: Duration) -> bool {
    tokio::select! {
        () = stop.notified() => true,
        () = tokio::time::sleep(d) => false,
    }
}

/// Removes the pod object if it still has this uid (deletion finished).
fn finish_deletion(shared: &Shared, key: &Key, uid: &str) {
    let mut st = shared.lock();
    st.runtimes.remove(uid);
    if st
        .objects
        .get(key)
        .is_some_and(|p| p["metadata"]["uid"].as_str() == Some(uid))
    {
        st.remove(&shared.events_tx, key);
    }
}

/// Substitutes `$(VAR)` references as the kubelet does (`$$` escapes).
fn expand(text: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(after) = after.strip_prefix('$') {
            out.push('$');
            rest = after;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match env.get(name) {
                Some(v) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The container's environment: the image's, then the pod's `env` (values and the fieldRefs
/// these clients use).
fn container_env(image_env: &BTreeMap<String, String>, pod: &Value) -> BTreeMap<String, String> {
    let mut env = image_env.clone();
    env.insert(
        "HOSTNAME".into(),
        pod["metadata"]["name"].as_str().unwrap_or_default().into(),
    );
    env.insert("KUBERNETES_SERVICE_HOST".into(), "127.0.0.1".into());
    for e in pod["spec"]["containers"][0]["env"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let Some(name) = e["name"].as_str() else {
            continue;
        };
        let value = if let Some(v) = e["value"].as_str() {
            expand(v, &env)
        } else if let Some(path) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            match path {
                "metadata.name" | "metadata.namespace" | "metadata.uid" => pod["metadata"]
                    [&path[9..]]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                "status.podIP" | "status.hostIP" => "127.0.0.1".to_owned(),
                "spec.nodeName" => NODE_NAME.to_owned(),
                "spec.serviceAccountName" => pod["spec"]["serviceAccountName"]
                    .as_str()
                    .unwrap_or("default")
                    .to_owned(),
                _ => String::new(),
            }
        } else {
            String::new()
        };
        env.insert(name.to_owned(), value);
    }
    env
}

/// Runs one pod's life; spawned when the pod is created.
pub(crate) async fn run_pod(shared: Arc<Shared>, key: Key, uid: String, stop: Arc<Notify>) {
    let cfg = shared.config.clone();
    if stopped_during(&stop, cfg.schedule_delay).await {
        return stop_and_finish(&shared, &key, &uid, None).await;
    }
    let Some(pod) = current(&shared, &key, &uid) else {
        return;
    };
    let fault = fault_of(&shared, &pod);

    // Scheduling.
    if let Some(message) = unschedulable_reason(&shared, &pod) {
        update(&shared, &key, &uid, |p| {
            set_condition(
                p,
                "PodScheduled",
                "False",
                Some("Unschedulable"),
                Some(&message),
            );
        });
        record_event(&shared, &key, &uid, "Warning", "FailedScheduling", &message);
        stop.notified().await;
        return stop_and_finish(&shared, &key, &uid, None).await;
    }
    update(&shared, &key, &uid, |p| {
        p["spec"]["nodeName"] = json!(NODE_NAME);
        p["status"]["hostIP"] = json!("127.0.0.1");
        p["status"]["hostIPs"] = json!([{"ip": "127.0.0.1"}]);
        p["status"]["startTime"] = json!(now_rfc3339());
        set_condition(p, "PodScheduled", "True", None, None);
        set_condition(p, "Initialized", "True", None, None);
        let waiting = json!({"waiting": {"reason": "ContainerCreating"}});
        let s = container_status(p, waiting, false, 0, None);
        p["status"]["containerStatuses"] = json!([s]);
    });

    // The image.
    let image_name = pod["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let image = cfg.images.get(&image_name).cloned();
    let image = match (image, &fault) {
        (Some(image), f) if !matches!(f, Some(Fault::ImagePull)) => image,
        _ => {
            if stopped_during(&stop, cfg.pull_delay).await {
                return stop_and_finish(&shared, &key, &uid, None).await;
            }
            let pull = format!(
                "Failed to pull image \"{image_name}\": rpc error: code = NotFound desc = failed to pull and unpack image \"{image_name}\": not found"
            );
            update(&shared, &key, &uid, |p| {
                let s = container_status(
                    p,
                    json!({"waiting": {"reason": "ErrImagePull", "message": pull}}),
                    false,
                    0,
                    None,
                );
                p["status"]["containerStatuses"] = json!([s]);
            });
            record_event(&shared, &key, &uid, "Warning", "Failed", &pull);
            if stopped_during(&stop, cfg.pull_delay).await {
                return stop_and_finish(&shared, &key, &uid, None).await;
            }
            let back_off = format!("Back-off pulling image \"{image_name}\"");
            update(&shared, &key, &uid, |p| {
                let s = container_status(
                    p,
                    json!({"waiting": {"reason": "ImagePullBackOff", "message": back_off}}),
                    false,
                    0,
                    None,
                );
                p["status"]["containerStatuses"] = json!([s]);
            });
            record_event(&shared, &key, &uid, "Normal", "BackOff", &back_off);
            stop.notified().await;
            return stop_and_finish(&shared, &key, &uid, None).await;
        }
    };
    if let Some(Fault::SlowStart(delay)) = &fault
        && stopped_during(&stop, *delay).await
    {
        return stop_and_finish(&shared, &key, &uid, None).await;
    }

    // The container: command and args as Kubernetes combines them with the image's.
    let c = &pod["spec"]["containers"][0];
    let strings = |v: &Value| -> Option<Vec<String>> {
        v.as_array().map(|a| {
            a.iter()
                .map(|s| s.as_str().unwrap_or_default().to_owned())
                .collect()
        })
    };
    let env = container_env(&image.env, &pod);
    let (command, args) = match (strings(&c["command"]), strings(&c["args"])) {
        (Some(cmd), args) => (cmd, args.unwrap_or_default()),
        (None, Some(args)) => (image.entrypoint.clone(), args),
        (None, None) => (image.entrypoint.clone(), image.cmd.clone()),
    };
    let argv: Vec<String> = command
        .iter()
        .chain(&args)
        .map(|a| expand(a, &env))
        .collect();
    let working_dir = c["workingDir"]
        .as_str()
        .map(PathBuf::from)
        .or_else(|| image.working_dir.clone());
    let restart_policy = pod["spec"]["restartPolicy"]
        .as_str()
        .unwrap_or("Always")
        .to_owned();
    let log_path = shared
        .log_root
        .join(format!("{}_{}_{uid}.log", key.namespace, key.name));
    {
        let mut st = shared.lock();
        if let Some(rt) = st.runtimes.get_mut(&uid) {
            rt.log = Some(log_path.clone());
        }
    }

    let mut restarts = 0u64;
    let mut last_state: Option<Value> = None;
    let mut backoff = cfg.crash_backoff;
    loop {
        let failure = |reason: &str, message: String| {
            let message2 = message.clone();
            let reason2 = reason.to_owned();
            update(&shared, &key, &uid, move |p| {
                let s = container_status(
                    p,
                    json!({"waiting": {"reason": reason2, "message": message2}}),
                    false,
                    0,
                    None,
                );
                p["status"]["containerStatuses"] = json!([s]);
            });
            record_event(&shared, &key, &uid, "Warning", "Failed", &message);
        };
        let Some((program, rest)) = argv.split_first() else {
            failure("CreateContainerConfigError", "no command specified".into());
            stop.notified().await;
            return stop_and_finish(&shared, &key, &uid, None).await;
        };
        if let Some(dir) = &working_dir
            && !dir.is_dir()
        {
            failure(
                "CreateContainerError",
                format!(
                    "failed to create containerd task: chdir to cwd (\"{}\") set in config.json failed: no such file or directory",
                    dir.display()
                ),
            );
            stop.notified().await;
            return stop_and_finish(&shared, &key, &uid, None).await;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path);
        let (out, err) = match log.and_then(|f| Ok((f.try_clone()?, f))) {
            Ok((a, b)) => (Stdio::from(a), Stdio::from(b)),
            Err(_) => (Stdio::null(), Stdio::null()),
        };
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(rest)
            .env_clear()
            .envs(&env)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .kill_on_drop(true);
        if let Some(dir) = &working_dir {
            cmd.current_dir(dir);
        }
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => {
                failure(
                    "RunContainerError",
                    format!("failed to start container: exec: \"{program}\": {e}"),
                );
                stop.notified().await;
                return stop_and_finish(&shared, &key, &uid, None).await;
            }
        };
        let pgid = child.id().and_then(|p| i32::try_from(p).ok());
        {
            let mut st = shared.lock();
            if let Some(p) = pgid {
                st.every_pgid.push(p);
            }
            if let Some(rt) = st.runtimes.get_mut(&uid) {
                rt.pgid = pgid;
            }
        }
        let started_at = now_rfc3339();
        let last = last_state.clone();
        update(&shared, &key, &uid, |p| {
            p["status"]["phase"] = json!("Running");
            p["status"]["podIP"] = json!("127.0.0.1");
            p["status"]["podIPs"] = json!([{"ip": "127.0.0.1"}]);
            set_condition(p, "ContainersReady", "True", None, None);
            set_condition(p, "Ready", "True", None, None);
            let s = container_status(
                p,
                json!({"running": {"startedAt": started_at}}),
                true,
                restarts,
                last,
            );
            p["status"]["containerStatuses"] = json!([s]);
        });
        if matches!(fault, Some(Fault::Fail)) {
            // Let the process start, then fail the container as an OOM kill would.
            tokio::time::sleep(Duration::from_millis(50)).await;
            if let Some(p) = pgid {
                signal_group(p, Signal::SIGKILL);
            }
        }
        let vanish = match &fault {
            Some(Fault::Vanish(after)) => *after,
            _ => Duration::from_secs(86_400 * 365),
        };
        tokio::select! {
            status = child.wait() => {
                if let Some(p) = pgid {
                    signal_group(p, Signal::SIGKILL);
                }
                use std::os::unix::process::ExitStatusExt;
                let code = status
                    .ok()
                    .and_then(|s| s.code().or_else(|| s.signal().map(|sig| 128 + sig)))
                    .unwrap_or(-1);
                let code = if matches!(fault, Some(Fault::Fail)) { 137 } else { code };
                let reason = match (code, &fault) {
                    (0, _) => "Completed",
                    (_, Some(Fault::Fail)) => "OOMKilled",
                    _ => "Error",
                };
                let terminated = json!({"terminated": {
                    "exitCode": code, "reason": reason, "startedAt": started_at,
                    "finishedAt": now_rfc3339(),
                    "containerID": format!("emulator://{uid}"),
                }});
                let restart = match restart_policy.as_str() {
                    "Always" => true,
                    "OnFailure" => code != 0,
                    _ => false,
                };
                if restart {
                    restarts += 1;
                    last_state = Some(terminated);
                    let message = format!(
                        "back-off {}s restarting failed container={} pod={}_{}({uid})",
                        backoff.as_secs().max(10),
                        pod["spec"]["containers"][0]["name"].as_str().unwrap_or_default(),
                        key.name, key.namespace
                    );
                    let last = last_state.clone();
                    update(&shared, &key, &uid, |p| {
                        set_condition(p, "Ready", "False", Some("ContainersNotReady"), None);
                        let s = container_status(p, json!({"waiting": {"reason": "CrashLoopBackOff", "message": message}}), false, restarts, last);
                        p["status"]["containerStatuses"] = json!([s]);
                    });
                    record_event(&shared, &key, &uid, "Warning", "BackOff", "Back-off restarting failed container");
                    if stopped_during(&stop, backoff).await {
                        return stop_and_finish(&shared, &key, &uid, None).await;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
                update(&shared, &key, &uid, |p| {
                    p["status"]["phase"] = json!(if code == 0 { "Succeeded" } else { "Failed" });
                    set_condition(p, "Ready", "False", Some("PodCompleted"), None);
                    set_condition(p, "ContainersReady", "False", Some("PodCompleted"), None);
                    let s = container_status(p, terminated, false, restarts, None);
                    p["status"]["containerStatuses"] = json!([s]);
                });
                {
                    let mut st = shared.lock();
                    if let Some(rt) = st.runtimes.get_mut(&uid) {
                        rt.pgid = None;
                    }
                }
                stop.notified().await;
                return stop_and_finish(&shared, &key, &uid, None).await;
            }
            () = stop.notified() => {
                return stop_and_finish(&shared, &key, &uid, Some((pgid, child))).await;
            }
            () = tokio::time::sleep(vanish) => {
                if let Some(p) = pgid {
                    signal_group(p, Signal::SIGKILL);
                }
                let _ = child.wait().await;
                finish_deletion(&shared, &key, &uid);
                return;
            }
        }
    }
}

/// Deletion: SIGTERM to the container, SIGKILL after the grace period, then the object goes.
async fn stop_and_finish(
    shared: &Shared,
    key: &Key,
    uid: &str,
    running: Option<(Option<i32>, tokio::process::Child)>,
) {
    if let Some((pgid, mut child)) = running {
        let grace = shared
            .lock()
            .runtimes
            .get(uid)
            .and_then(|rt| rt.grace)
            .unwrap_or(0);
        if let Some(p) = pgid {
            if grace == 0 {
                signal_group(p, Signal::SIGKILL);
            } else {
                signal_group(p, Signal::SIGTERM);
                if tokio::time::timeout(Duration::from_secs(grace), child.wait())
                    .await
                    .is_err()
                {
                    signal_group(p, Signal::SIGKILL);
                }
            }
        }
        let _ = child.wait().await;
        if let Some(p) = pgid {
            signal_group(p, Signal::SIGKILL);
        }
    }
    finish_deletion(shared, key, uid);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependent_variables() {
        let env = BTreeMap::from([("A".to_owned(), "1".to_owned())]);
        assert_eq!(expand("x$(A)y$(B)$$(A)", &env), "x1y$(B)$(A)");
    }
}
