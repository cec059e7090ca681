//! The `yarn-emulator` binary against yarn-api-client, the Python library Enterprise Gateway
//! uses, driven the way EG drives it.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::{Workdir, submit_kernel};

fn python() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python")
}

/// The emulator binary with two RMs (the first active); stops when dropped (stdin EOF, then
/// SIGKILL by `kill_on_drop`).
struct EmulatorProcess {
    child: Child,
    urls: Vec<String>,
}

impl EmulatorProcess {
    async fn start() -> EmulatorProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_yarn-emulator"))
            .args([
                "--addr",
                "127.0.0.1:0",
                "--addr",
                "127.0.0.1:0",
                "--exit-on-stdin-eof",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("yarn-emulator starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut urls = Vec::new();
        let read = async {
            while let Some(line) = lines.next_line().await.expect("read") {
                if line == "READY" {
                    break;
                }
                if let Some(url) = line.split_whitespace().nth(2) {
                    urls.push(url.to_owned());
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(20), read)
            .await
            .expect("emulator ready");
        EmulatorProcess { child, urls }
    }

    /// Closes stdin and waits for the emulator to stop (and kill its AMs).
    async fn stop(mut self) {
        drop(self.child.stdin.take());
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        assert!(
            matches!(status, Ok(Ok(s)) if s.success()),
            "emulator exit: {status:?}"
        );
    }
}

const SCRIPT: &str = r#"
import json, sys, time
from yarn_api_client.resource_manager import ResourceManager
from yarn_api_client.auth import SimpleAuth
from yarn_api_client.errors import APIError

standby, active, app_id = sys.argv[1], sys.argv[2], sys.argv[3]
out = {}
rm = ResourceManager(service_endpoints=[active])
out["info"] = rm.cluster_information().data
out["apps"] = rm.cluster_applications(started_time_begin=str(int(time.time() - 600) * 1000)).data
out["apps_future"] = rm.cluster_applications(started_time_begin=str(int(time.time() + 600) * 1000)).data
out["app"] = rm.cluster_application(app_id).data
out["state"] = rm.cluster_application_state(app_id).data
try:
    rm.cluster_application("application_1_9999")
except APIError as e:
    out["missing"] = str(e)
# EG: SimpleAuth and [standby, active]; the library accepts the standby, then works via 307.
ha = ResourceManager(service_endpoints=[standby, active], auth=SimpleAuth("alice"))
out["ha_endpoint"] = ha.get_active_endpoint()
out["kill"] = ha.cluster_application_kill(app_id).data
states = []
for _ in range(50):
    s = ha.cluster_application_state(app_id).data["state"]
    states.append(s)
    if s in ("FINISHED", "KILLED", "FAILED"):
        break
    time.sleep(0.1)
out["states_after_kill"] = states
out["kill_again"] = ha.cluster_application_kill(app_id).data
print(json.dumps(out))
"#;

#[tokio::test]
async fn yarn_api_client_gets_real_rm_shapes_from_the_emulator_binary() {
    let emu = EmulatorProcess::start().await;
    let (active, standby) = (emu.urls[0].clone(), emu.urls[1].clone());
    let work = Workdir::new(std::slice::from_ref(&active));
    let app_id = submit_kernel(&work, "py-kernel", Some("py-kernel"), 0).await;
    // Wait for RUNNING through the emulator's REST API.
    let mut running = false;
    for _ in 0..200 {
        let r = crate::raw(
            "GET",
            &format!("{active}/ws/v1/cluster/apps/{app_id}/state"),
            &[],
            None,
        )
        .await
        .expect("state");
        if r.json()["state"] == "RUNNING" {
            running = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(running, "app never ran");

    let out = Command::new(python())
        .args(["-c", SCRIPT, &standby, &active, &app_id])
        .kill_on_drop(true)
        .output()
        .await
        .expect("python runs");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json from python");

    assert_eq!(v["info"]["clusterInfo"]["haState"], "ACTIVE");
    let apps = v["apps"]["apps"]["app"].as_array().expect("apps.app[]");
    assert!(
        apps.iter()
            .any(|a| a["id"] == app_id.as_str() && a["name"] == "py-kernel"),
        "{apps:?}"
    );
    assert_eq!(v["apps_future"], serde_json::json!({"apps": null}));
    assert_eq!(v["app"]["app"]["state"], "RUNNING");
    assert_eq!(v["app"]["app"]["amHostHttpAddress"], "127.0.0.1:8042");
    assert_eq!(v["state"], serde_json::json!({"state": "RUNNING"}));
    let missing = v["missing"].as_str().expect("APIError for a missing app");
    assert!(
        missing.contains("status: 404") && missing.contains("NotFoundException"),
        "{missing}"
    );
    assert_eq!(
        v["ha_endpoint"],
        standby.as_str(),
        "the library accepts a redirecting standby"
    );
    assert_eq!(v["kill"], serde_json::json!({"state": "KILLING"}));
    let states = v["states_after_kill"].as_array().expect("states");
    assert_eq!(
        states.last(),
        Some(&serde_json::json!("KILLED")),
        "{states:?}"
    );
    assert_eq!(v["kill_again"], serde_json::json!({"state": "KILLED"}));
    emu.stop().await;
}
