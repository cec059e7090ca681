//! The emulated cluster's state: applications, queues, HA roles, and their JSON renderings.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::sync::Notify;

use super::EmulatorConfig;

/// Milliseconds since the epoch.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The RM-internal application state (`RMAppState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RmAppState {
    /// Created.
    New,
    /// Being stored.
    NewSaving,
    /// Submitted to the scheduler.
    Submitted,
    /// Accepted; waiting for the AM container.
    Accepted,
    /// The AM process runs.
    Running,
    /// A kill is in progress (`/state` shows it; `/apps/{id}` shows the state before).
    Killing,
    /// Ended with exit code 0.
    Finished,
    /// Ended with a non-zero exit code, or failed by the test.
    Failed,
    /// Killed.
    Killed,
}

impl RmAppState {
    /// The RM's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RmAppState::New => "NEW",
            RmAppState::NewSaving => "NEW_SAVING",
            RmAppState::Submitted => "SUBMITTED",
            RmAppState::Accepted => "ACCEPTED",
            RmAppState::Running => "RUNNING",
            RmAppState::Killing => "KILLING",
            RmAppState::Finished => "FINISHED",
            RmAppState::Failed => "FAILED",
            RmAppState::Killed => "KILLED",
        }
    }

    /// FINISHED, FAILED or KILLED.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RmAppState::Finished | RmAppState::Failed | RmAppState::Killed
        )
    }

    /// Parses an external (`YarnApplicationState`) name, case-insensitively.
    pub(crate) fn parse_external(s: &str) -> Option<RmAppState> {
        Some(match s.trim().to_ascii_uppercase().as_str() {
            "NEW" => RmAppState::New,
            "NEW_SAVING" => RmAppState::NewSaving,
            "SUBMITTED" => RmAppState::Submitted,
            "ACCEPTED" => RmAppState::Accepted,
            "RUNNING" => RmAppState::Running,
            "FINISHED" => RmAppState::Finished,
            "FAILED" => RmAppState::Failed,
            "KILLED" => RmAppState::Killed,
            _ => return None,
        })
    }
}

/// Why an application is being ended by the RM rather than by its own exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Termination {
    /// Killed (REST PUT or the test's RM-side kill), with diagnostics.
    Kill(String),
    /// Failed by the test, with diagnostics.
    Fail(String),
}

/// One application.
#[derive(Debug)]
pub(crate) struct AppRecord {
    pub(crate) id: String,
    pub(crate) seq: u64,
    pub(crate) user: String,
    pub(crate) name: String,
    pub(crate) queue: String,
    pub(crate) app_type: String,
    pub(crate) tags: Vec<String>,
    pub(crate) state: RmAppState,
    /// The external state shown while KILLING.
    pub(crate) before_kill: RmAppState,
    pub(crate) final_status: &'static str,
    pub(crate) diagnostics: String,
    pub(crate) started: i64,
    pub(crate) launched: i64,
    pub(crate) finished: i64,
    pub(crate) memory_mb: u64,
    pub(crate) vcores: u32,
    pub(crate) command: String,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) held: bool,
    pub(crate) pending: Option<Termination>,
    pub(crate) pgid: Option<i32>,
    pub(crate) exit_code: Option<i32>,
    pub(crate) log_dir: PathBuf,
    pub(crate) wake: Arc<Notify>,
}

impl AppRecord {
    /// The external `YarnApplicationState`.
    pub(crate) fn external_state(&self) -> RmAppState {
        if self.state == RmAppState::Killing {
            self.before_kill
        } else {
            self.state
        }
    }

    pub(crate) fn container_id(&self, cluster_ts: i64) -> String {
        format!("container_{cluster_ts}_{:04}_01_000001", self.seq)
    }

    pub(crate) fn attempt_id(&self, cluster_ts: i64) -> String {
        format!("appattempt_{cluster_ts}_{:04}_000001", self.seq)
    }

    fn placed(&self) -> bool {
        self.launched > 0
    }

    /// The app object of `/apps` and `/apps/{id}`.
    pub(crate) fn to_json(
        &self,
        shared: &ClusterState,
        rm_url: &str,
        config: &EmulatorConfig,
    ) -> Value {
        let ts = shared.cluster_ts;
        let running = self.external_state() == RmAppState::Running;
        let now = now_ms();
        let end = if self.finished > 0 {
            self.finished
        } else {
            now
        };
        let elapsed = end - self.started;
        let node = &config.node_http_address;
        let (alloc_mb, alloc_vc, containers) = if self.state.is_final() {
            (0, 0, -1)
        } else if running {
            (self.memory_mb as i64, i64::from(self.vcores), 1)
        } else {
            (0, 0, 0)
        };
        let tracking_ui = if self.state.is_final() {
            "History"
        } else if self.placed() {
            "ApplicationMaster"
        } else {
            "UNASSIGNED"
        };
        let mut app = json!({
            "id": self.id,
            "user": self.user,
            "name": self.name,
            "queue": self.queue,
            "state": self.external_state().as_str(),
            "finalStatus": self.final_status,
            "progress": if self.state.is_final() { 100.0 } else if running { 10.0 } else { 0.0 },
            "trackingUI": tracking_ui,
            "trackingUrl": format!("{rm_url}/proxy/{}/", self.id),
            "diagnostics": self.diagnostics,
            "clusterId": ts,
            "applicationType": self.app_type,
            "applicationTags": self.tags.join(","),
            "priority": 0,
            "startedTime": self.started,
            "launchTime": self.launched,
            "finishedTime": self.finished,
            "elapsedTime": elapsed,
            "allocatedMB": alloc_mb,
            "allocatedVCores": alloc_vc,
            "reservedMB": 0,
            "reservedVCores": 0,
            "runningContainers": containers,
            "memorySeconds": (self.memory_mb as i64) * elapsed.max(0) / 1000,
            "vcoreSeconds": i64::from(self.vcores) * elapsed.max(0) / 1000,
            "queueUsagePercentage": if running { 100.0 * self.memory_mb as f64 / config.total_memory_mb as f64 } else { 0.0 },
            "clusterUsagePercentage": if running { 100.0 * self.memory_mb as f64 / config.total_memory_mb as f64 } else { 0.0 },
            "preemptedResourceMB": 0,
            "preemptedResourceVCores": 0,
            "numNonAMContainerPreempted": 0,
            "numAMContainerPreempted": 0,
            "logAggregationStatus": "DISABLED",
            "unmanagedApplication": false,
            "appNodeLabelExpression": "",
            "amNodeLabelExpression": "",
        });
        if self.placed()
            && let Value::Object(map) = &mut app
        {
            map.insert(
                "amContainerLogs".into(),
                json!(format!(
                    "http://{node}/node/containerlogs/{}/{}",
                    self.container_id(ts),
                    self.user
                )),
            );
            map.insert("amHostHttpAddress".into(), json!(node));
            map.insert("amRPCAddress".into(), json!("N/A"));
        }
        app
    }
}

/// A test-visible copy of one application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppSnapshot {
    /// `application_<ts>_<seq>`.
    pub id: String,
    /// Owner.
    pub user: String,
    /// Name.
    pub name: String,
    /// Queue.
    pub queue: String,
    /// Tags (lower-cased, as the RM stores them).
    pub tags: Vec<String>,
    /// Internal state.
    pub state: RmAppState,
    /// Diagnostics.
    pub diagnostics: String,
    /// The AM command line as run.
    pub command: String,
    /// The AM process group while it runs.
    pub pgid: Option<i32>,
    /// The AM exit code, once it exited.
    pub exit_code: Option<i32>,
}

/// Leaf queue usage overrides (`queue` → partition → absoluteUsedCapacity).
pub(crate) type UsageOverrides = BTreeMap<String, BTreeMap<String, f64>>;

/// Everything the RMs of one emulated cluster share.
#[derive(Debug)]
pub(crate) struct ClusterState {
    pub(crate) cluster_ts: i64,
    pub(crate) next_seq: u64,
    pub(crate) apps: BTreeMap<String, AppRecord>,
    pub(crate) reserved: BTreeSet<String>,
    /// Which RM index is active; `None` = all standby.
    pub(crate) active: Option<usize>,
    pub(crate) rm_urls: Vec<String>,
    pub(crate) hold_new_apps: bool,
    pub(crate) usage: UsageOverrides,
    pub(crate) every_pgid: BTreeSet<i32>,
    pub(crate) stopped: bool,
}

/// The shared core of the emulator: config, state, cookie secret.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: EmulatorConfig,
    pub(crate) state: Mutex<ClusterState>,
    pub(crate) secret: std::hash::RandomState,
    pub(crate) log_root: PathBuf,
    /// The per-application driver tasks (aborted on stop).
    pub(crate) tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, ClusterState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Signs a cookie payload with the emulator's per-instance key.
    pub(crate) fn sign(&self, payload: &str) -> String {
        let mut h = self.secret.build_hasher();
        h.write(payload.as_bytes());
        let a = h.finish();
        let mut h = self.secret.build_hasher();
        h.write_u64(a);
        h.write(payload.as_bytes());
        format!("{a:016x}{:016x}", h.finish())
    }

    /// The `hadoop.auth` cookie value for a user (quoted, like Hadoop's).
    pub(crate) fn auth_cookie(&self, user: &str) -> String {
        let expiry = now_ms()
            + i64::try_from(self.config.auth_token_validity.as_millis()).unwrap_or(i64::MAX / 2);
        let payload = format!("u={user}&p={user}&t=simple&e={expiry}");
        format!("\"{payload}&s={}\"", self.sign(&payload))
    }

    /// The user of a valid, unexpired `hadoop.auth` cookie value.
    pub(crate) fn verify_cookie(&self, value: &str) -> Option<String> {
        let value = value.trim().trim_matches('"');
        let (payload, sig) = value.rsplit_once("&s=")?;
        if self.sign(payload) != sig {
            return None;
        }
        let mut user = None;
        let mut expiry = None;
        for part in payload.split('&') {
            match part.split_once('=') {
                Some(("u", u)) => user = Some(u.to_owned()),
                Some(("e", e)) => expiry = e.parse::<i64>().ok(),
                _ => {}
            }
        }
        (expiry? > now_ms()).then_some(user?)
    }
}

impl ClusterState {
    pub(crate) fn new(rm_count: usize) -> ClusterState {
        ClusterState {
            cluster_ts: now_ms(),
            next_seq: 1,
            apps: BTreeMap::new(),
            reserved: BTreeSet::new(),
            active: Some(0),
            rm_urls: vec![String::new(); rm_count],
            hold_new_apps: false,
            usage: BTreeMap::new(),
            every_pgid: BTreeSet::new(),
            stopped: false,
        }
    }

    pub(crate) fn new_app_id(&mut self) -> String {
        let id = format!("application_{}_{:04}", self.cluster_ts, self.next_seq);
        self.next_seq += 1;
        self.reserved.insert(id.clone());
        id
    }

    pub(crate) fn snapshot(app: &AppRecord) -> AppSnapshot {
        AppSnapshot {
            id: app.id.clone(),
            user: app.user.clone(),
            name: app.name.clone(),
            queue: app.queue.clone(),
            tags: app.tags.clone(),
            state: app.state,
            diagnostics: app.diagnostics.clone(),
            command: app.command.clone(),
            pgid: app.pgid,
            exit_code: app.exit_code,
        }
    }

    fn running_memory(&self, queue: Option<&str>) -> u64 {
        self.apps
            .values()
            .filter(|a| {
                a.external_state() == RmAppState::Running && queue.is_none_or(|q| a.queue == q)
            })
            .map(|a| a.memory_mb)
            .sum()
    }

    /// `{"clusterMetrics": {...}}`.
    pub(crate) fn metrics_json(&self, config: &EmulatorConfig) -> Value {
        let count = |f: &dyn Fn(&AppRecord) -> bool| self.apps.values().filter(|a| f(a)).count();
        let ext = |a: &AppRecord| a.external_state();
        let allocated_mb = self.running_memory(None);
        let allocated_vc: u32 = self
            .apps
            .values()
            .filter(|a| ext(a) == RmAppState::Running)
            .map(|a| a.vcores)
            .sum();
        let running = count(&|a| ext(a) == RmAppState::Running);
        json!({"clusterMetrics": {
            "appsSubmitted": self.apps.len(),
            "appsCompleted": count(&|a| a.state.is_final()),
            "appsPending": count(&|a| matches!(ext(a), RmAppState::New | RmAppState::NewSaving | RmAppState::Submitted | RmAppState::Accepted)),
            "appsRunning": running,
            "appsFailed": count(&|a| a.state == RmAppState::Failed),
            "appsKilled": count(&|a| a.state == RmAppState::Killed),
            "reservedMB": 0,
            "availableMB": config.total_memory_mb.saturating_sub(allocated_mb),
            "allocatedMB": allocated_mb,
            "totalMB": config.total_memory_mb,
            "reservedVirtualCores": 0,
            "availableVirtualCores": config.total_vcores.saturating_sub(allocated_vc),
            "allocatedVirtualCores": allocated_vc,
            "totalVirtualCores": config.total_vcores,
            "containersAllocated": running,
            "containersReserved": 0,
            "containersPending": count(&|a| ext(a) == RmAppState::Accepted),
            "totalNodes": 1,
            "activeNodes": 1,
            "lostNodes": 0,
            "unhealthyNodes": 0,
            "decommissioningNodes": 0,
            "decommissionedNodes": 0,
            "rebootedNodes": 0,
            "shutdownNodes": 0,
        }})
    }

    /// `{"scheduler": {"schedulerInfo": {...}}}` in the capacity-scheduler shape.
    pub(crate) fn scheduler_json(&self, config: &EmulatorConfig) -> Value {
        let total = config.total_memory_mb.max(1) as f64;
        let mut partitions: Vec<&str> = vec![""];
        partitions.extend(config.node_labels.iter().map(String::as_str));
        let mut leaves = Vec::new();
        let mut root_used = 0.0;
        for q in &config.queues {
            let computed = 100.0 * self.running_memory(Some(&q.name)) as f64 / total;
            let by_partition: Vec<Value> = partitions
                .iter()
                .map(|p| {
                    let abs_used = self
                        .usage
                        .get(&q.name)
                        .and_then(|m| m.get(*p))
                        .copied()
                        .unwrap_or(if p.is_empty() { computed } else { 0.0 });
                    let used = if q.capacity > 0.0 {
                        abs_used * 100.0 / q.capacity
                    } else {
                        0.0
                    };
                    json!({
                        "partitionName": p,
                        "capacity": q.capacity,
                        "usedCapacity": used,
                        "maxCapacity": 100.0,
                        "absoluteCapacity": q.capacity,
                        "absoluteUsedCapacity": abs_used,
                        "absoluteMaxCapacity": 100.0,
                        "maxAMLimitPercentage": 10.0,
                    })
                })
                .collect();
            let abs_used = by_partition
                .first()
                .and_then(|p| p.get("absoluteUsedCapacity"))
                .and_then(Value::as_f64)
                .unwrap_or(0.0);
            root_used += abs_used;
            let apps_in = |f: &dyn Fn(RmAppState) -> bool| {
                self.apps
                    .values()
                    .filter(|a| a.queue == q.name && f(a.external_state()))
                    .count()
            };
            let mem = self.running_memory(Some(&q.name));
            leaves.push(json!({
                "type": "capacitySchedulerLeafQueueInfo",
                "queueName": q.name,
                "queuePath": format!("root.{}", q.name),
                "state": "RUNNING",
                "capacity": q.capacity,
                "usedCapacity": if q.capacity > 0.0 { abs_used * 100.0 / q.capacity } else { 0.0 },
                "maxCapacity": 100.0,
                "absoluteCapacity": q.capacity,
                "absoluteMaxCapacity": 100.0,
                "absoluteUsedCapacity": abs_used,
                "numApplications": apps_in(&|s| !s.is_final()),
                "numActiveApplications": apps_in(&|s| s == RmAppState::Running),
                "numPendingApplications": apps_in(&|s| !s.is_final() && s != RmAppState::Running),
                "numContainers": apps_in(&|s| s == RmAppState::Running),
                "resourcesUsed": {"memory": mem, "vCores": 0},
                "capacities": {"queueCapacitiesByPartition": by_partition},
                "nodeLabels": ["*"],
            }));
        }
        let root_parts: Vec<Value> = partitions
            .iter()
            .map(|p| json!({
                "partitionName": p, "capacity": 100.0, "usedCapacity": if p.is_empty() { root_used } else { 0.0 },
                "maxCapacity": 100.0, "absoluteCapacity": 100.0,
                "absoluteUsedCapacity": if p.is_empty() { root_used } else { 0.0 }, "absoluteMaxCapacity": 100.0,
            }))
            .collect();
        json!({"scheduler": {"schedulerInfo": {
            "type": "capacityScheduler",
            "capacity": 100.0,
            "usedCapacity": root_used,
            "maxCapacity": 100.0,
            "queueName": "root",
            "queues": {"queue": leaves},
            "capacities": {"queueCapacitiesByPartition": root_parts},
        }}})
    }
}

/// The container's time for the kill grace period, from the config.
pub(crate) fn grace(config: &EmulatorConfig) -> Duration {
    config.kill_grace
}
