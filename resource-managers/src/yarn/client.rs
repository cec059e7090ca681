//! [`YarnClient`]: a typed client of the ResourceManager REST API with active-RM selection.

use std::path::Path;
use std::time::Duration;

use parking_lot::Mutex;
use reqwest::header::{CONTENT_TYPE, COOKIE, HeaderMap, LOCATION, SET_COOKIE};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;

use super::error::YarnError;
use super::site::SiteConfig;
use super::types::{
    App, AppEnvelope, AppState, AppStateBody, AppsEnvelope, CapacityQueue, ClusterInfo,
    ClusterInfoEnvelope, FairQueue, NewApplication, RemoteExceptionEnvelope, SchedulerEnvelope,
    SchedulerInfo, SubmissionContext, parse_app_id,
};

/// How the client authenticates to the RM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// No identity (the RM's anonymous `dr.who`; reads only).
    Anonymous,
    /// Hadoop simple auth: `?user.name=<user>` until the RM hands out a `hadoop.auth` cookie,
    /// then that cookie.
    Simple {
        /// The Hadoop user name.
        user: String,
    },
    /// Kerberos/SPNEGO: not supported yet; [`YarnClient::new`] refuses it.
    Kerberos,
}

/// Everything a [`YarnClient`] needs. Build it with [`YarnClientConfig::from_endpoints`] or
/// [`YarnClientConfig::from_site`], then adjust fields.
#[derive(Debug, Clone)]
pub struct YarnClientConfig {
    /// RM base URLs in preference order (`http(s)://host:port`; any path is ignored).
    pub endpoints: Vec<String>,
    /// Authentication.
    pub auth: Auth,
    /// PEM CA bundle: when set, only these roots are trusted for `https` RMs.
    pub ca_bundle_pem: Option<Vec<u8>>,
    /// Per-request timeout.
    pub request_timeout: Duration,
    /// Pause between state polls after a kill.
    pub poll_interval: Duration,
    /// State polls after a kill before giving up.
    pub max_poll_attempts: u32,
}

impl YarnClientConfig {
    /// `yarn_endpoint` and the optional `alt_yarn_endpoint` (EG's settings), simple auth off.
    pub fn from_endpoints(primary: &str, alt: Option<&str>) -> YarnClientConfig {
        let mut endpoints = vec![primary.to_owned()];
        endpoints.extend(alt.filter(|a| !a.trim().is_empty()).map(str::to_owned));
        YarnClientConfig {
            endpoints,
            auth: Auth::Anonymous,
            ca_bundle_pem: None,
            request_timeout: Duration::from_secs(30),
            poll_interval: Duration::from_millis(500),
            max_poll_attempts: 10,
        }
    }

    /// RM addresses from `<hadoop_conf_dir>/yarn-site.xml` (HA rm-ids, `yarn.http.policy`).
    pub fn from_site(hadoop_conf_dir: &Path) -> Result<YarnClientConfig, YarnError> {
        let site = SiteConfig::load(hadoop_conf_dir)?;
        let urls = site.rm_web_urls().map_err(|message| YarnError::Site {
            path: hadoop_conf_dir.join("yarn-site.xml").display().to_string(),
            message,
        })?;
        let mut config = YarnClientConfig::from_endpoints("", None);
        config.endpoints = urls;
        Ok(config)
    }

    /// Sets the authentication.
    pub fn with_auth(mut self, auth: Auth) -> YarnClientConfig {
        self.auth = auth;
        self
    }

    /// Reads a PEM CA bundle file (EG's `yarn_cert_bundle`).
    pub fn with_ca_bundle_file(mut self, path: &Path) -> Result<YarnClientConfig, YarnError> {
        let pem = std::fs::read(path).map_err(|e| {
            YarnError::Config(format!("cannot read CA bundle {}: {e}", path.display()))
        })?;
        self.ca_bundle_pem = Some(pem);
        Ok(self)
    }
}

/// Query filters of `GET /ws/v1/cluster/apps` (all optional).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppsQuery {
    /// Only apps in one of these states.
    pub states: Vec<AppState>,
    /// Only apps started at or after this time (ms since the epoch).
    pub started_time_begin: Option<i64>,
    /// Only apps carrying any of these tags.
    pub application_tags: Vec<String>,
    /// Only apps of this user.
    pub user: Option<String>,
    /// Only unfinished apps in this queue.
    pub queue: Option<String>,
    /// Only apps of these types (`SPARK`, ...).
    pub application_types: Vec<String>,
    /// At most this many apps.
    pub limit: Option<u32>,
}

impl AppsQuery {
    fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        let join = |v: &[String]| v.join(",");
        if !self.states.is_empty() {
            let states: Vec<String> = self.states.iter().map(|s| s.as_str().to_owned()).collect();
            q.push(("states", join(&states)));
        }
        if let Some(t) = self.started_time_begin {
            q.push(("startedTimeBegin", t.to_string()));
        }
        if !self.application_tags.is_empty() {
            q.push(("applicationTags", join(&self.application_tags)));
        }
        if let Some(u) = &self.user {
            q.push(("user", u.clone()));
        }
        if let Some(queue) = &self.queue {
            q.push(("queue", queue.clone()));
        }
        if !self.application_types.is_empty() {
            q.push(("applicationTypes", join(&self.application_types)));
        }
        if let Some(l) = self.limit {
            q.push(("limit", l.to_string()));
        }
        q
    }
}

/// One RM endpoint and its auth cookie.
#[derive(Debug)]
struct Endpoint {
    base: Url,
    cookie: Mutex<Option<String>>,
}

/// A raw response, read fully.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

/// How a request to one endpoint went, for the failover logic.
enum Outcome {
    /// A normal answer (any status but a standby redirect).
    Answer(Reply),
    /// The RM is a standby (307, or a 2.x `Refresh` page) or unreachable.
    NotActive(YarnError),
}

/// Typed client of the RM REST API.
///
/// It probes `GET /ws/v1/cluster/info` on each endpoint in order, remembers the first whose
/// `haState` is ACTIVE, and sends every call there. It never follows redirects: on a 307, a
/// connection failure or a standby answer it forgets the active RM, probes again and retries
/// the call once.
#[derive(Debug)]
pub struct YarnClient {
    http: reqwest::Client,
    endpoints: Vec<Endpoint>,
    user: Option<String>,
    active: Mutex<Option<usize>>,
    poll_interval: Duration,
    max_poll_attempts: u32,
}

/// Only the scheme, host and port of an endpoint are used (EG documents
/// `http://host:8088/ws/v1/cluster`; the path part is dropped like yarn-api-client does).
fn normalize_endpoint(raw: &str) -> Result<Url, YarnError> {
    let raw = raw.trim();
    let with_scheme = if raw.contains("://") {
        raw.to_owned()
    } else {
        format!("http://{raw}")
    };
    let mut url = Url::parse(&with_scheme)
        .map_err(|e| YarnError::Config(format!("invalid YARN endpoint {raw:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(YarnError::Config(format!(
            "invalid YARN endpoint {raw:?}: need http(s)://host:port"
        )));
    }
    url.set_path("/");
    url.set_query(None);
    url.set_fragment(None);
    Ok(url)
}

fn check_app_id(id: &str) -> Result<(), YarnError> {
    if parse_app_id(id).is_some() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(())
    } else {
        Err(YarnError::InvalidAppId(id.to_owned()))
    }
}

fn truncate(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(500) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

impl YarnClient {
    /// Builds the client (no network traffic yet).
    pub fn new(config: YarnClientConfig) -> Result<YarnClient, YarnError> {
        let user = match config.auth {
            Auth::Anonymous => None,
            Auth::Simple { user } => Some(user),
            Auth::Kerberos => return Err(YarnError::KerberosUnsupported),
        };
        let endpoints = config
            .endpoints
            .iter()
            .filter(|e| !e.trim().is_empty())
            .map(|e| {
                Ok(Endpoint {
                    base: normalize_endpoint(e)?,
                    cookie: Mutex::new(None),
                })
            })
            .collect::<Result<Vec<_>, YarnError>>()?;
        if endpoints.is_empty() {
            return Err(YarnError::Config(
                "no YARN ResourceManager endpoint configured".into(),
            ));
        }
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.request_timeout);
        if let Some(pem) = &config.ca_bundle_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| YarnError::Config(format!("invalid CA bundle: {e}")))?;
            if certs.is_empty() {
                return Err(YarnError::Config("CA bundle holds no certificate".into()));
            }
            builder = builder.tls_certs_only(certs);
        }
        let http = builder
            .build()
            .map_err(|e| YarnError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(YarnClient {
            http,
            endpoints,
            user,
            active: Mutex::new(None),
            poll_interval: config.poll_interval,
            max_poll_attempts: config.max_poll_attempts,
        })
    }

    /// The configured RM base URLs, in preference order.
    pub fn endpoints(&self) -> Vec<String> {
        self.endpoints
            .iter()
            .map(|e| e.base.as_str().trim_end_matches('/').to_owned())
            .collect()
    }

    /// The RM currently believed active, if one has been probed.
    pub fn active_endpoint(&self) -> Option<String> {
        let idx = (*self.active.lock())?;
        self.endpoints
            .get(idx)
            .map(|e| e.base.as_str().trim_end_matches('/').to_owned())
    }

    /// Sends one request to one endpoint, handling simple auth and the cookie.
    async fn send_to(
        &self,
        idx: usize,
        method: &Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&serde_json::Value>,
    ) -> Result<Reply, YarnError> {
        let endpoint = self
            .endpoints
            .get(idx)
            .ok_or_else(|| YarnError::Config("endpoint index out of range".into()))?;
        let mut url = endpoint
            .base
            .join(path.trim_start_matches('/'))
            .map_err(|e| YarnError::Config(format!("bad request path {path:?}: {e}")))?;
        let mut retried_without_cookie = false;
        loop {
            let cookie = endpoint.cookie.lock().clone();
            {
                let mut pairs = url.query_pairs_mut();
                pairs.clear();
                for (k, v) in query {
                    pairs.append_pair(k, v);
                }
                if let (Some(user), None) = (&self.user, &cookie) {
                    pairs.append_pair("user.name", user);
                }
            }
            if url.query() == Some("") {
                url.set_query(None);
            }
            let mut req = self.http.request(method.clone(), url.clone());
            if let Some(c) = &cookie {
                req = req.header(COOKIE, c.as_str());
            }
            if let Some(b) = body {
                req = req
                    .header(CONTENT_TYPE, "application/json")
                    .body(b.to_string());
            } else if *method != Method::GET {
                req = req.header(CONTENT_TYPE, "application/json");
            }
            let endpoint_name = endpoint.base.as_str().trim_end_matches('/').to_owned();
            let resp = req.send().await.map_err(|source| YarnError::Transport {
                endpoint: endpoint_name.clone(),
                source,
            })?;
            let status = resp.status();
            let headers = resp.headers().clone();
            for value in headers.get_all(SET_COOKIE) {
                let Ok(value) = value.to_str() else { continue };
                let pair = value.split(';').next().unwrap_or_default().trim();
                if let Some(v) = pair.strip_prefix("hadoop.auth=") {
                    let v = v.trim_matches('"');
                    *endpoint.cookie.lock() = (!v.is_empty()).then(|| pair.to_owned());
                }
            }
            let body = resp
                .bytes()
                .await
                .map_err(|source| YarnError::Transport {
                    endpoint: endpoint_name,
                    source,
                })?
                .to_vec();
            if status == StatusCode::UNAUTHORIZED
                && cookie.is_some()
                && self.user.is_some()
                && !retried_without_cookie
            {
                // The cookie expired or was not accepted: authenticate again by name.
                *endpoint.cookie.lock() = None;
                retried_without_cookie = true;
                continue;
            }
            return Ok(Reply {
                status,
                headers,
                body,
            });
        }
    }

    /// Classifies a reply: a standby answer (307, or a 2.x 200 page with `Refresh`) or a real one.
    fn classify(&self, idx: usize, result: Result<Reply, YarnError>) -> Result<Outcome, YarnError> {
        let endpoint = self
            .endpoints
            .get(idx)
            .map(|e| e.base.to_string())
            .unwrap_or_default();
        match result {
            Err(e @ YarnError::Transport { .. }) => Ok(Outcome::NotActive(e)),
            Err(e) => Err(e),
            Ok(reply) => {
                let refresh_page = reply.status == StatusCode::OK
                    && reply.headers.contains_key("refresh")
                    && String::from_utf8_lossy(&reply.body).contains("This is standby RM");
                if reply.status == StatusCode::TEMPORARY_REDIRECT || refresh_page {
                    let detail = reply
                        .headers
                        .get(LOCATION)
                        .and_then(|l| l.to_str().ok())
                        .map(|l| format!("redirects to {l}"))
                        .unwrap_or_else(|| truncate(&reply.body));
                    Ok(Outcome::NotActive(YarnError::Standby { endpoint, detail }))
                } else {
                    Ok(Outcome::Answer(reply))
                }
            }
        }
    }

    /// Probes every endpoint's `/ws/v1/cluster/info` in order and caches the first ACTIVE one.
    async fn probe(&self) -> Result<usize, YarnError> {
        let mut tried = Vec::new();
        for idx in 0..self.endpoints.len() {
            let name = self.endpoints[idx]
                .base
                .as_str()
                .trim_end_matches('/')
                .to_owned();
            let reply = self
                .send_to(idx, &Method::GET, "/ws/v1/cluster/info", &[], None)
                .await;
            match reply {
                Ok(r) if r.status == StatusCode::OK => {
                    match serde_json::from_slice::<ClusterInfoEnvelope>(&r.body) {
                        Ok(info) if info.cluster_info.is_active() => {
                            *self.active.lock() = Some(idx);
                            return Ok(idx);
                        }
                        Ok(info) => {
                            tried.push(format!("{name}: haState {}", info.cluster_info.ha_state))
                        }
                        Err(e) => tried.push(format!("{name}: unreadable cluster info ({e})")),
                    }
                }
                Ok(r) => tried.push(format!("{name}: HTTP {}", r.status.as_u16())),
                Err(e) => tried.push(format!("{name}: {e}")),
            }
        }
        Err(YarnError::NoActiveRm { tried })
    }

    /// Sends a call to the active RM, re-probing and retrying once if it is not active any more.
    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&serde_json::Value>,
    ) -> Result<Reply, YarnError> {
        let mut last_err = None;
        for _ in 0..2 {
            let cached = *self.active.lock();
            let idx = match cached {
                Some(i) => i,
                None => self.probe().await?,
            };
            let result = self.send_to(idx, &method, path, query, body).await;
            match self.classify(idx, result)? {
                Outcome::Answer(reply) => return Ok(reply),
                Outcome::NotActive(e) => {
                    let mut active = self.active.lock();
                    if *active == Some(idx) {
                        *active = None;
                    }
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| YarnError::NoActiveRm { tried: Vec::new() }))
    }

    /// Turns a non-2xx reply into an error.
    fn ok(reply: Reply) -> Result<Reply, YarnError> {
        if reply.status.is_success() {
            return Ok(reply);
        }
        let status = reply.status.as_u16();
        match serde_json::from_slice::<RemoteExceptionEnvelope>(&reply.body) {
            Ok(env) => Err(YarnError::Remote {
                status,
                exception: env.remote_exception.exception,
                message: env.remote_exception.message,
            }),
            Err(_) => Err(YarnError::Status {
                status,
                body: truncate(&reply.body),
            }),
        }
    }

    fn decode<T: DeserializeOwned>(what: &'static str, reply: &Reply) -> Result<T, YarnError> {
        serde_json::from_slice(&reply.body).map_err(|e| YarnError::Decode {
            what,
            message: format!("{e} in {}", truncate(&reply.body)),
        })
    }

    async fn get_json<T: DeserializeOwned>(
        &self,
        what: &'static str,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, YarnError> {
        let reply = Self::ok(self.call(Method::GET, path, query, None).await?)?;
        Self::decode(what, &reply)
    }

    /// `GET /ws/v1/cluster/info` of the active RM.
    pub async fn cluster_info(&self) -> Result<ClusterInfo, YarnError> {
        let env: ClusterInfoEnvelope = self
            .get_json("cluster info", "/ws/v1/cluster/info", &[])
            .await?;
        Ok(env.cluster_info)
    }

    /// `GET /ws/v1/cluster/apps` with filters; no match is an empty list.
    pub async fn apps(&self, query: &AppsQuery) -> Result<Vec<App>, YarnError> {
        let env: AppsEnvelope = self
            .get_json("apps", "/ws/v1/cluster/apps", &query.pairs())
            .await?;
        Ok(env.apps.map(|a| a.app).unwrap_or_default())
    }

    /// The kernel's application: first by tag (`spark.yarn.tags=<kernel_id>`), then by name
    /// containing the kernel id (how EG finds it). Apps already in a final state are skipped;
    /// among several matches the newest id wins, compared numerically.
    pub async fn find_app_by_tag_or_name(
        &self,
        kernel_id: &str,
        started_after_ms: i64,
    ) -> Result<Option<App>, YarnError> {
        let tag = kernel_id.to_ascii_lowercase();
        let by_tag = self
            .apps(&AppsQuery {
                started_time_begin: Some(started_after_ms),
                application_tags: vec![tag.clone()],
                ..AppsQuery::default()
            })
            .await?;
        let pick = |apps: Vec<App>, matches: &dyn Fn(&App) -> bool| {
            apps.into_iter()
                .filter(|a| !a.state.is_final() && matches(a))
                .max_by_key(|a| a.id_key().unwrap_or_default())
        };
        // The tag filter matches any tag; confirm it is this exact one.
        if let Some(app) = pick(by_tag, &|a: &App| a.tags().any(|t| t == tag)) {
            return Ok(Some(app));
        }
        let all = self
            .apps(&AppsQuery {
                started_time_begin: Some(started_after_ms),
                ..AppsQuery::default()
            })
            .await?;
        Ok(pick(all, &|a: &App| a.name.contains(kernel_id)))
    }

    /// `GET /ws/v1/cluster/apps/{id}`.
    pub async fn app(&self, id: &str) -> Result<App, YarnError> {
        check_app_id(id)?;
        let env: AppEnvelope = self
            .get_json("app", &format!("/ws/v1/cluster/apps/{id}"), &[])
            .await?;
        Ok(env.app)
    }

    /// `GET /ws/v1/cluster/apps/{id}/state` (may show internal states such as KILLING).
    pub async fn app_state(&self, id: &str) -> Result<AppState, YarnError> {
        check_app_id(id)?;
        let body: AppStateBody = self
            .get_json("app state", &format!("/ws/v1/cluster/apps/{id}/state"), &[])
            .await?;
        Ok(body.state)
    }

    /// Kills an application: `PUT /state {"state":"KILLED"}`, then, if the RM answered 202 or
    /// a non-final state, polls `/state` until the state is final. Returns that final state
    /// (which may be FINISHED or FAILED if the app ended on its own first).
    pub async fn kill(&self, id: &str) -> Result<AppState, YarnError> {
        check_app_id(id)?;
        let path = format!("/ws/v1/cluster/apps/{id}/state");
        let body = serde_json::json!({ "state": "KILLED" });
        let reply = Self::ok(self.call(Method::PUT, &path, &[], Some(&body)).await?)?;
        let mut state = Self::decode::<AppStateBody>("kill", &reply)?.state;
        if reply.status == StatusCode::OK && state.is_final() {
            return Ok(state);
        }
        for _ in 0..self.max_poll_attempts {
            tokio::time::sleep(self.poll_interval).await;
            state = self.app_state(id).await?;
            if state.is_final() {
                return Ok(state);
            }
        }
        Err(YarnError::KillTimeout {
            app_id: id.to_owned(),
            last_state: state,
        })
    }

    /// The absolute used capacity (percent) of `queue` in partition `label` (`""` is the
    /// default partition), as EG's queue check reads it; `None` when the queue or partition
    /// does not exist. Fair scheduler: used/max memory of the queue (default partition only).
    /// FIFO: the cluster's used capacity (default partition only).
    pub async fn queue_partition_usage(
        &self,
        queue: &str,
        label: &str,
    ) -> Result<Option<f64>, YarnError> {
        let env: SchedulerEnvelope = self
            .get_json("scheduler", "/ws/v1/cluster/scheduler", &[])
            .await?;
        Ok(match env.scheduler.scheduler_info {
            SchedulerInfo::Capacity(root) => find_capacity_queue(&root, queue).and_then(|q| {
                q.capacities.as_ref().and_then(|c| {
                    c.queue_capacities_by_partition
                        .iter()
                        .find(|p| p.partition_name == label)
                        .map(|p| p.absolute_used_capacity)
                })
            }),
            SchedulerInfo::Fair { root_queue } if label.is_empty() => {
                find_fair_queue(&root_queue, queue).map(|q| {
                    if q.max_resources.memory > 0.0 {
                        q.used_resources.memory / q.max_resources.memory * 100.0
                    } else {
                        0.0
                    }
                })
            }
            SchedulerInfo::Fifo { used_capacity } if label.is_empty() => {
                Some(used_capacity * 100.0)
            }
            _ => None,
        })
    }

    /// `POST /ws/v1/cluster/apps/new-application` (needs an authenticated user).
    pub async fn new_application(&self) -> Result<NewApplication, YarnError> {
        let reply = Self::ok(
            self.call(
                Method::POST,
                "/ws/v1/cluster/apps/new-application",
                &[],
                None,
            )
            .await?,
        )?;
        Self::decode("new-application", &reply)
    }

    /// `POST /ws/v1/cluster/apps`: submits an application; returns the `Location` the RM gave.
    pub async fn submit_application(
        &self,
        context: &SubmissionContext,
    ) -> Result<String, YarnError> {
        self.submit_application_as(context, None).await
    }

    /// Like [`YarnClient::submit_application`], on behalf of `do_as` (Hadoop's `doAs` proxy
    /// user: the app then belongs to that user, as with `spark-submit --proxy-user`).
    pub async fn submit_application_as(
        &self,
        context: &SubmissionContext,
        do_as: Option<&str>,
    ) -> Result<String, YarnError> {
        check_app_id(&context.application_id)?;
        let body = serde_json::to_value(context)
            .map_err(|e| YarnError::Config(format!("cannot encode the submission: {e}")))?;
        let query: Vec<(&str, String)> =
            do_as.map(|u| ("doAs", u.to_owned())).into_iter().collect();
        let reply = Self::ok(
            self.call(Method::POST, "/ws/v1/cluster/apps", &query, Some(&body))
                .await?,
        )?;
        Ok(reply
            .headers
            .get(LOCATION)
            .and_then(|l| l.to_str().ok())
            .unwrap_or_default()
            .to_owned())
    }
}

/// Breadth-first search of a capacity-scheduler queue tree by short name.
fn find_capacity_queue<'a>(root: &'a CapacityQueue, name: &str) -> Option<&'a CapacityQueue> {
    let mut pending = std::collections::VecDeque::from([root]);
    while let Some(q) = pending.pop_front() {
        if q.queue_name == name {
            return Some(q);
        }
        if let Some(children) = &q.queues {
            pending.extend(children.queue.iter());
        }
    }
    None
}

/// Search of a fair-scheduler tree by full (`root.a`) or last-component name.
fn find_fair_queue<'a>(root: &'a FairQueue, name: &str) -> Option<&'a FairQueue> {
    let mut pending = std::collections::VecDeque::from([root]);
    while let Some(q) = pending.pop_front() {
        if q.queue_name == name || q.queue_name.rsplit('.').next() == Some(name) {
            return Some(q);
        }
        if let Some(children) = &q.child_queues {
            pending.extend(children.queue.iter());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_keep_only_scheme_host_port() {
        let url = normalize_endpoint("http://rm:8088/ws/v1/cluster?x=1").expect("url");
        assert_eq!(url.as_str(), "http://rm:8088/");
        assert_eq!(
            normalize_endpoint("rm:8088").expect("url").as_str(),
            "http://rm:8088/"
        );
        assert!(normalize_endpoint("ftp://rm").is_err());
    }

    #[test]
    fn kerberos_is_refused_clearly() {
        let config =
            YarnClientConfig::from_endpoints("http://rm:8088", None).with_auth(Auth::Kerberos);
        let err = YarnClient::new(config).expect_err("kerberos");
        assert!(err.to_string().contains("not supported yet"), "{err}");
    }

    #[test]
    fn ca_bundle_without_certificates_is_a_config_error() {
        let mut config = YarnClientConfig::from_endpoints("https://rm:8090", None);
        config.ca_bundle_pem = Some(b"not a pem bundle".to_vec());
        let err = YarnClient::new(config).expect_err("bad bundle");
        assert!(matches!(err, YarnError::Config(_)), "{err}");
    }

    #[test]
    fn app_ids_are_validated() {
        assert!(check_app_id("application_1700000000000_0001").is_ok());
        for bad in ["application_1_x", "../x", "application_1_1/../../x", ""] {
            assert!(check_app_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn scheduler_shapes_are_searched() {
        let body = r#"{"scheduler":{"schedulerInfo":{"type":"capacityScheduler","queueName":"root",
            "queues":{"queue":[{"queueName":"a","queues":{"queue":[{"queueName":"b",
            "capacities":{"queueCapacitiesByPartition":[{"partitionName":"","absoluteUsedCapacity":12.5},
            {"partitionName":"gpu","absoluteUsedCapacity":99.0}]}}]}}]}}}}"#;
        let env: SchedulerEnvelope = serde_json::from_str(body).expect("scheduler");
        let SchedulerInfo::Capacity(root) = env.scheduler.scheduler_info else {
            panic!("not capacity");
        };
        let b = find_capacity_queue(&root, "b").expect("b");
        let parts = &b
            .capacities
            .as_ref()
            .expect("caps")
            .queue_capacities_by_partition;
        assert_eq!(parts[1].absolute_used_capacity, 99.0);
        assert!(find_capacity_queue(&root, "c").is_none());

        let fair = r#"{"scheduler":{"schedulerInfo":{"type":"fairScheduler","rootQueue":{"queueName":"root",
            "childQueues":{"queue":[{"queueName":"root.x","usedResources":{"memory":512,"vCores":1},
            "maxResources":{"memory":1024,"vCores":4}}]}}}}}"#;
        let env: SchedulerEnvelope = serde_json::from_str(fair).expect("fair");
        let SchedulerInfo::Fair { root_queue } = env.scheduler.scheduler_info else {
            panic!("not fair");
        };
        assert_eq!(
            find_fair_queue(&root_queue, "x").map(|q| q.used_resources.memory),
            Some(512.0)
        );
    }
}
