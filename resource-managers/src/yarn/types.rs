//! Serde types for the ResourceManager REST envelopes the client reads and writes.
//!
//! Field names follow the RM's JSON (camelCase for reads, kebab-case for the submission
//! context). Every read field is optional or defaulted: RM versions differ, and a missing field
//! must not fail a whole response.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// The external application state (`YarnApplicationState`), as `/apps/{id}` reports it,
/// extended with the RM-internal states (`RMAppState`) that `/apps/{id}/state` can also show.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AppState {
    /// Just created.
    New,
    /// Being written to the state store.
    NewSaving,
    /// Submitted to the scheduler.
    Submitted,
    /// Accepted by the scheduler; waiting for its AM container.
    Accepted,
    /// The AM container runs.
    Running,
    /// Internal: the final state is being saved.
    FinalSaving,
    /// Internal: finishing.
    Finishing,
    /// Internal: a kill is in progress.
    Killing,
    /// Ended normally.
    Finished,
    /// Ended in failure.
    Failed,
    /// Killed.
    Killed,
    /// A state name this client does not know (kept verbatim).
    Other(String),
}

impl AppState {
    /// The RM's spelling of the state.
    pub fn as_str(&self) -> &str {
        match self {
            AppState::New => "NEW",
            AppState::NewSaving => "NEW_SAVING",
            AppState::Submitted => "SUBMITTED",
            AppState::Accepted => "ACCEPTED",
            AppState::Running => "RUNNING",
            AppState::FinalSaving => "FINAL_SAVING",
            AppState::Finishing => "FINISHING",
            AppState::Killing => "KILLING",
            AppState::Finished => "FINISHED",
            AppState::Failed => "FAILED",
            AppState::Killed => "KILLED",
            AppState::Other(s) => s,
        }
    }

    /// Parses a state name (case-insensitive); unknown names become [`AppState::Other`].
    pub fn parse(s: &str) -> AppState {
        match s.to_ascii_uppercase().as_str() {
            "NEW" => AppState::New,
            "NEW_SAVING" => AppState::NewSaving,
            "SUBMITTED" => AppState::Submitted,
            "ACCEPTED" => AppState::Accepted,
            "RUNNING" => AppState::Running,
            "FINAL_SAVING" => AppState::FinalSaving,
            "FINISHING" => AppState::Finishing,
            "KILLING" => AppState::Killing,
            "FINISHED" => AppState::Finished,
            "FAILED" => AppState::Failed,
            "KILLED" => AppState::Killed,
            _ => AppState::Other(s.to_owned()),
        }
    }

    /// FINISHED, FAILED or KILLED: the application has ended for good.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            AppState::Finished | AppState::Failed | AppState::Killed
        )
    }
}

impl fmt::Display for AppState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for AppState {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<AppState, D::Error> {
        let s = String::deserialize(d)?;
        Ok(AppState::parse(&s))
    }
}

impl Serialize for AppState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// `{"clusterInfo": {...}}`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ClusterInfoEnvelope {
    #[serde(rename = "clusterInfo")]
    pub(crate) cluster_info: ClusterInfo,
}

/// What `/ws/v1/cluster/info` says about an RM.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ClusterInfo {
    /// Cluster id (the RM start time on most versions).
    pub id: i64,
    /// When the RM started (ms since the epoch).
    pub started_on: i64,
    /// Service state: NOTINITED, INITED, STARTED or STOPPED.
    pub state: String,
    /// HA state: INITIALIZING, ACTIVE, STANDBY or STOPPED.
    pub ha_state: String,
    /// The RM's version string.
    pub resource_manager_version: String,
    /// The Hadoop version string.
    pub hadoop_version: String,
}

impl ClusterInfo {
    /// Whether this RM says it is the active one.
    pub fn is_active(&self) -> bool {
        self.ha_state.eq_ignore_ascii_case("ACTIVE")
    }
}

/// `{"apps": {"app": [...]}}`, where `apps` is `null` (or `{}`) when nothing matched.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct AppsEnvelope {
    #[serde(default)]
    pub(crate) apps: Option<AppList>,
}

/// The inner `apps` object.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct AppList {
    #[serde(default)]
    pub(crate) app: Vec<App>,
}

/// `{"app": {...}}`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct AppEnvelope {
    pub(crate) app: App,
}

/// One application as `/apps` and `/apps/{id}` describe it (the fields a gateway needs).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct App {
    /// `application_<clusterTimestamp>_<sequence>`.
    pub id: String,
    /// The submitting (or proxied) user.
    #[serde(default)]
    pub user: String,
    /// The application name (Spark: `--name`, the kernel id for kernels).
    #[serde(default)]
    pub name: String,
    /// The queue.
    #[serde(default)]
    pub queue: String,
    /// The external state.
    pub state: AppState,
    /// UNDEFINED, SUCCEEDED, FAILED or KILLED.
    #[serde(default)]
    pub final_status: String,
    /// Diagnostics (why it failed or was killed).
    #[serde(default)]
    pub diagnostics: String,
    /// `SPARK`, `MAPREDUCE`, ...
    #[serde(default)]
    pub application_type: String,
    /// Comma-joined tags (the RM lower-cases them).
    #[serde(default)]
    pub application_tags: String,
    /// Start time (ms since the epoch).
    #[serde(default)]
    pub started_time: i64,
    /// Finish time (ms since the epoch), 0 while running.
    #[serde(default)]
    pub finished_time: i64,
    /// `host:port` of the NodeManager web UI hosting the AM; empty or absent until placed.
    #[serde(default)]
    pub am_host_http_address: Option<String>,
    /// Tracking URL, if any.
    #[serde(default)]
    pub tracking_url: Option<String>,
}

impl App {
    /// The tags as a list.
    pub fn tags(&self) -> impl Iterator<Item = &str> {
        self.application_tags
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
    }

    /// The host part of `amHostHttpAddress`, once the AM has been placed.
    pub fn am_host(&self) -> Option<&str> {
        let addr = self.am_host_http_address.as_deref()?.trim();
        let addr = addr.split_once("://").map_or(addr, |(_, rest)| rest);
        let host = match addr.rsplit_once(':') {
            Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
            _ => addr,
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        (!host.is_empty()).then_some(host)
    }

    /// The `(cluster timestamp, sequence)` pair of the id, for numeric comparison.
    pub fn id_key(&self) -> Option<(u64, u64)> {
        parse_app_id(&self.id)
    }
}

/// Splits `application_<ts>_<seq>` into numbers.
pub fn parse_app_id(id: &str) -> Option<(u64, u64)> {
    let rest = id.strip_prefix("application_")?;
    let (ts, seq) = rest.split_once('_')?;
    Some((ts.parse().ok()?, seq.parse().ok()?))
}

/// `{"state": "..."}`: the body of GET and PUT `/apps/{id}/state`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct AppStateBody {
    pub(crate) state: AppState,
}

/// The RM's error body: `{"RemoteException": {...}}`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct RemoteExceptionEnvelope {
    #[serde(rename = "RemoteException")]
    pub(crate) remote_exception: RemoteExceptionBody,
}

/// The inside of a `RemoteException`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct RemoteExceptionBody {
    pub(crate) exception: String,
    pub(crate) message: String,
    pub(crate) java_class_name: String,
}

/// `{"scheduler": {"schedulerInfo": {...}}}`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct SchedulerEnvelope {
    pub(crate) scheduler: SchedulerWrapper,
}

/// The `scheduler` object.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct SchedulerWrapper {
    #[serde(rename = "schedulerInfo")]
    pub(crate) scheduler_info: SchedulerInfo,
}

/// The scheduler description; its shape depends on `type`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type")]
pub enum SchedulerInfo {
    /// The capacity scheduler: a tree of queues with per-partition capacities.
    #[serde(rename = "capacityScheduler")]
    Capacity(CapacityQueue),
    /// The fair scheduler: a tree of queues under `rootQueue`.
    #[serde(rename = "fairScheduler")]
    Fair {
        /// The root queue.
        #[serde(rename = "rootQueue")]
        root_queue: FairQueue,
    },
    /// The FIFO scheduler: one implicit queue.
    #[serde(rename = "fifoScheduler")]
    Fifo {
        /// Used capacity as a fraction (0..1).
        #[serde(rename = "usedCapacity", default)]
        used_capacity: f64,
    },
}

/// A capacity-scheduler queue (the root or any child).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CapacityQueue {
    /// The queue's short name (`root`, `default`, ...).
    pub queue_name: String,
    /// Capacity within the parent, percent.
    pub capacity: f64,
    /// Used capacity, percent of its own capacity.
    pub used_capacity: f64,
    /// Absolute used capacity, percent of the cluster (absent on the root).
    pub absolute_used_capacity: f64,
    /// Child queues.
    pub queues: Option<CapacityQueueList>,
    /// Per-partition capacities.
    pub capacities: Option<PartitionCapacities>,
}

/// `queues: {"queue": [...]}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct CapacityQueueList {
    /// The children.
    pub queue: Vec<CapacityQueue>,
}

/// `capacities: {"queueCapacitiesByPartition": [...]}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PartitionCapacities {
    /// One entry per node-label partition; the default partition is named `""`.
    pub queue_capacities_by_partition: Vec<PartitionCapacity>,
}

/// One partition's capacities for a queue.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PartitionCapacity {
    /// The node label (`""` for the default partition).
    pub partition_name: String,
    /// Capacity, percent of the parent.
    pub capacity: f64,
    /// Used capacity, percent.
    pub used_capacity: f64,
    /// Absolute used capacity, percent of the cluster partition.
    pub absolute_used_capacity: f64,
}

/// A fair-scheduler queue.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FairQueue {
    /// Full queue name (`root.default`).
    pub queue_name: String,
    /// Resources in use.
    pub used_resources: FairResources,
    /// The queue's maximum.
    pub max_resources: FairResources,
    /// Children.
    pub child_queues: Option<FairQueueList>,
}

/// Fair-scheduler child list: `{"queue": [...]}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct FairQueueList {
    /// The children.
    pub queue: Vec<FairQueue>,
}

/// Memory and cores of a fair-scheduler queue.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FairResources {
    /// Megabytes.
    pub memory: f64,
    /// Virtual cores.
    pub v_cores: f64,
}

/// The reply to `POST /apps/new-application`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct NewApplication {
    /// The reserved application id.
    #[serde(rename = "application-id")]
    pub application_id: String,
    /// The largest container the cluster grants.
    #[serde(rename = "maximum-resource-capability", default)]
    pub maximum_resource_capability: Resource,
}

/// Memory (MB) and virtual cores.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    /// Megabytes.
    #[serde(default)]
    pub memory: u64,
    /// Virtual cores.
    #[serde(rename = "vCores", default)]
    pub v_cores: u32,
}

/// The body of `POST /apps` (`application-submission-context`), the fields a launcher needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SubmissionContext {
    /// The id from `new-application`.
    pub application_id: String,
    /// The name (Spark: `--name`).
    pub application_name: String,
    /// Target queue (`default` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// `SPARK`, `YARN`, ...
    #[serde(default)]
    pub application_type: String,
    /// Tags (any number).
    #[serde(default)]
    pub application_tags: ApplicationTags,
    /// How to start the application master.
    pub am_container_spec: AmContainerSpec,
    /// AM container resources.
    #[serde(default)]
    pub resource: Resource,
    /// Attempts before giving up.
    #[serde(default = "one")]
    pub max_app_attempts: u32,
    /// Whether the AM is unmanaged.
    #[serde(rename = "unmanaged-AM", default)]
    pub unmanaged_am: bool,
}

fn one() -> u32 {
    1
}

/// `application-tags: {"tag": [...]}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ApplicationTags {
    /// The tags.
    #[serde(default)]
    pub tag: Vec<String>,
}

/// `am-container-spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct AmContainerSpec {
    /// The command line(s) the NodeManager runs.
    pub commands: Commands,
    /// Environment of the container.
    #[serde(default)]
    pub environment: Environment,
}

/// `commands: {"command": "..."}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Commands {
    /// A shell command line.
    pub command: String,
}

/// `environment: {"entry": [{"key", "value"}]}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Environment {
    /// The variables.
    #[serde(default)]
    pub entry: Vec<KeyValue>,
}

/// One `{"key", "value"}` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    /// Name.
    pub key: String,
    /// Value.
    pub value: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apps_null_and_empty_object_mean_no_apps() {
        for body in [r#"{"apps":null}"#, r#"{"apps":{}}"#, r#"{}"#] {
            let env: AppsEnvelope = serde_json::from_str(body).expect(body);
            assert!(env.apps.unwrap_or_default().app.is_empty(), "{body}");
        }
    }

    #[test]
    fn am_host_parsing() {
        let mut app: App = serde_json::from_str(
            r#"{"id":"application_1_0001","state":"RUNNING","amHostHttpAddress":"node1:8042"}"#,
        )
        .expect("app");
        assert_eq!(app.am_host(), Some("node1"));
        app.am_host_http_address = Some(String::new());
        assert_eq!(app.am_host(), None);
        app.am_host_http_address = Some("http://127.0.0.1:8042".into());
        assert_eq!(app.am_host(), Some("127.0.0.1"));
        assert_eq!(app.id_key(), Some((1, 1)));
    }

    #[test]
    fn states_round_trip_and_unknowns_survive() {
        for s in ["NEW", "new_saving", "KILLING", "FINISHED", "weird"] {
            let st = AppState::parse(s);
            assert_eq!(st.as_str().to_ascii_uppercase(), s.to_ascii_uppercase());
        }
        assert!(AppState::parse("killed").is_final());
        assert!(!AppState::parse("KILLING").is_final());
    }
}
