//! External-program backends: a resource manager written in any language, as a program the
//! gateway talks to over its stdin and stdout (the plugin protocol, `docs/plugin-protocol.md`).
//!
//! Each kernel gets its own plugin process. The gateway starts the program in a new process
//! group, says `hello` (the plugin answers with the protocol version it speaks, the names it
//! answers to and its capabilities), asks it to `launch` the kernel (the plugin answers with the
//! kernel's connection info and a record of its own), and from then on asks it to `poll`,
//! `signal` and `terminate` the kernel; `cleanup` ends the conversation. After a gateway restart
//! a new plugin process is asked to `reattach` from the record. One JSON object per line, one
//! request at a time, each request with an id its answer must carry.
//!
//! Two ways to name the program:
//!
//! * [`ExternalResourceManager::for_kernelspecs`], the backend `external`: the kernelspec names
//!   its program in `metadata.process_proxy.config.plugin` (or
//!   `metadata.kernel_provisioner.config.plugin`) as an argv list, run in the kernelspec's
//!   directory: `"class_name": "external", "config": {"plugin": ["python3", "plugin.py"]}`.
//! * [`ExternalResourceManager::probe`]: the gateway's configuration names a program; its
//!   `hello` (asked once, at registration) gives the backend its name and the class and
//!   provisioner names kernelspecs use for it.
//!
//! **A plugin cannot hang or crash the gateway.** Every request has a deadline (a launch the
//! request's timeout, `hello` [`ExternalConfig::hello_timeout`], the others
//! [`ExternalConfig::request_timeout`]). The first answer that is not JSON, carries a wrong id or
//! lacks its fields, the first silence past a deadline and an exit before answering all end
//! the plugin: its process group is killed (so a kernel the plugin started in its group goes
//! with it) and the plugin is reaped; the launch fails with a [`PluginError`] naming the plugin
//! and what it did. A failure the plugin reports itself keeps its kind (see [`FailureKind`]).
//! The plugin gets exactly `PATH` (the gateway's search path) and the command's own `env`;
//! what the kernel gets travels in the `launch` request.

mod error;
mod protocol;
mod session;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use jupyter_protocol::ConnectionInfo;
use kernel_launcher::{InterruptMode, KernelSpec};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::time::Instant;

pub use error::PluginError;
pub use protocol::{
    FailureKind, Hello, PROTOCOL_VERSION, PluginCapabilities, PluginFailure, PluginHost,
};

use protocol::{Launched, Request, SpecFields, StateAnswer, fields_as};
use session::{Conversation, Session};

use crate::{
    BackendNames, Capabilities, Error, KernelHost, KernelProcess, KernelRecord, LaunchRequest,
    LaunchedKernel, ProcessState, ResourceManager,
};

/// The name of the backend whose kernelspecs name their own plugin program.
pub const NAME: &str = "external";

/// The kernelspec `config` key holding the plugin's argv.
pub const SPEC_KEY: &str = "plugin";

/// How often [`KernelProcess::wait`] polls the plugin.
const WAIT_POLL: Duration = Duration::from_millis(500);

/// A plugin program: what to run, where, with which environment besides `PATH`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginCommand {
    /// The program and its arguments; a program without `/` is found on the search path, one
    /// with a relative path is taken relative to `cwd`.
    pub argv: Vec<String>,
    /// The plugin's working directory (the kernelspec's directory for kernelspec plugins).
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// Variables the plugin gets besides `PATH`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

impl PluginCommand {
    /// `argv`, in the gateway's working directory, with no extra environment.
    pub fn new(argv: Vec<String>) -> PluginCommand {
        PluginCommand {
            argv,
            cwd: None,
            env: BTreeMap::new(),
        }
    }

    /// The command a kernelspec names in `config.plugin` (a list of strings), run in the
    /// kernelspec's directory.
    pub fn from_spec(spec: &KernelSpec) -> Result<PluginCommand, Error> {
        let missing = || {
            Error::Config(format!(
                "kernelspec '{}' uses the external backend but its config has no \
                 \"{SPEC_KEY}\": [\"program\", \"argument\", ...]",
                spec.name
            ))
        };
        let argv: Vec<String> = match spec.config.raw.get(SPEC_KEY) {
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .filter(|argv| !argv.is_empty())
                .ok_or_else(missing)?,
            _ => return Err(missing()),
        };
        Ok(PluginCommand {
            argv,
            cwd: Some(spec.resource_dir.clone()),
            env: BTreeMap::new(),
        })
    }

    /// How messages name the plugin before its `hello`: its argv, shortened.
    fn label(&self) -> String {
        format!("'{}'", protocol::excerpt(&self.argv.join(" ")))
    }
}

/// Settings shared by every plugin.
#[derive(Debug, Clone)]
pub struct ExternalConfig {
    /// Where a program named without `/` is looked for; also the plugin's `PATH`.
    pub search_path: Vec<PathBuf>,
    /// How long `hello` may take (a launch's own deadline still applies).
    pub hello_timeout: Duration,
    /// How long `poll`, `signal`, `reattach` and `cleanup` may take (`terminate` gets its grace
    /// period on top).
    pub request_timeout: Duration,
}

impl ExternalConfig {
    /// Settings with the default deadlines: 10 s for `hello` and for each later request.
    pub fn new(search_path: Vec<PathBuf>) -> ExternalConfig {
        ExternalConfig {
            search_path,
            hello_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// A backend that runs kernels through plugin programs (see the [module docs](self)).
#[derive(Debug)]
pub struct ExternalResourceManager {
    /// The configured plugin and what it said at registration; `None` for [`NAME`], whose
    /// kernelspecs name their programs.
    plugin: Option<(PluginCommand, Hello)>,
    config: ExternalConfig,
}

impl ExternalResourceManager {
    /// The `external` backend: each kernelspec names its plugin program in `config.plugin`.
    pub fn for_kernelspecs(config: ExternalConfig) -> ExternalResourceManager {
        ExternalResourceManager {
            plugin: None,
            config,
        }
    }

    /// A backend for a configured plugin: the program is run once for its `hello`, which gives
    /// the backend its name, the names it answers to and its capabilities. Fails when the
    /// plugin does not answer `hello` properly.
    pub async fn probe(
        command: PluginCommand,
        config: ExternalConfig,
    ) -> Result<ExternalResourceManager, Error> {
        let deadline = Instant::now() + config.hello_timeout;
        let mut session = Session::spawn(&command, &config.search_path, command.label())?;
        let hello = hello(&mut session, deadline).await;
        session.close(true).await;
        Ok(ExternalResourceManager {
            plugin: Some((command, hello?)),
            config,
        })
    }

    /// What the configured plugin said at registration (`None` for the `external` backend).
    pub fn hello(&self) -> Option<&Hello> {
        self.plugin.as_ref().map(|(_, hello)| hello)
    }

    /// Starts the plugin for a kernel and says `hello`, within `deadline`. A configured plugin
    /// must still call itself by the name it registered with.
    async fn start(
        &self,
        command: &PluginCommand,
        deadline: Instant,
    ) -> Result<(Session, Hello), Error> {
        let mut session = Session::spawn(command, &self.config.search_path, command.label())?;
        let deadline = deadline.min(Instant::now() + self.config.hello_timeout);
        let said = match hello(&mut session, deadline).await {
            Ok(said) => said,
            Err(err) => {
                session.kill().await;
                return Err(err.into());
            }
        };
        if let Some((_, registered)) = &self.plugin
            && registered.name != said.name
        {
            let err = PluginError::Malformed {
                plugin: session.label().to_owned(),
                op: "hello".to_owned(),
                reason: format!(
                    "it registered as '{}' and now calls itself '{}'",
                    registered.name, said.name
                ),
            };
            session.fail(&err).await;
            return Err(err.into());
        }
        Ok((session, said))
    }

    fn command_for(&self, spec: &KernelSpec) -> Result<PluginCommand, Error> {
        match &self.plugin {
            Some((command, _)) => Ok(command.clone()),
            None => PluginCommand::from_spec(spec),
        }
    }
}

/// Says `hello` and checks the answer; the session is named by the plugin's name afterwards.
async fn hello(session: &mut Session, deadline: Instant) -> Result<Hello, PluginError> {
    let request = Request::new(
        "hello",
        json!({
            "protocol": PROTOCOL_VERSION,
            "gateway": concat!("enterprise-gateway ", env!("CARGO_PKG_VERSION")),
        }),
    );
    let fields = session.call(request, deadline).await?;
    let malformed = |reason: String| PluginError::Malformed {
        plugin: session.label().to_owned(),
        op: "hello".to_owned(),
        reason,
    };
    let said: Hello = match fields_as(fields) {
        Ok(said) => said,
        Err(reason) => {
            let err = malformed(reason);
            session.fail(&err).await;
            return Err(err);
        }
    };
    if said.protocol != PROTOCOL_VERSION {
        let err = PluginError::Version {
            plugin: session.label().to_owned(),
            got: said.protocol,
        };
        session.fail(&err).await;
        return Err(err);
    }
    if !is_plain_name(&said.name) {
        let err = malformed(format!(
            "its name '{}' must be letters, digits, '_' and '-'",
            protocol::excerpt(&said.name)
        ));
        session.fail(&err).await;
        return Err(err);
    }
    session.relabel(format!("'{}'", said.name));
    Ok(said)
}

fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

/// Reads a successful answer as `T`, ending the plugin when it lacks its fields.
async fn answer_as<T: for<'de> Deserialize<'de>>(
    session: &mut Session,
    op: &str,
    fields: serde_json::Map<String, Value>,
) -> Result<T, PluginError> {
    match fields_as(fields) {
        Ok(value) => Ok(value),
        Err(reason) => {
            let err = PluginError::Malformed {
                plugin: session.label().to_owned(),
                op: op.to_owned(),
                reason,
            };
            session.fail(&err).await;
            Err(err)
        }
    }
}

#[async_trait]
impl ResourceManager for ExternalResourceManager {
    fn name(&self) -> &str {
        match &self.plugin {
            Some((_, hello)) => &hello.name,
            None => NAME,
        }
    }

    fn names(&self) -> BackendNames {
        match &self.plugin {
            Some((_, hello)) => BackendNames {
                class_names: hello.class_names.clone(),
                provisioner_names: hello.provisioner_names.clone(),
            },
            None => BackendNames::default(),
        }
    }

    /// A configured plugin's, from its `hello`; the `external` backend cannot know its
    /// kernelspecs' plugins in advance and states the defaults.
    fn capabilities(&self) -> Capabilities {
        let Some((_, hello)) = &self.plugin else {
            return Capabilities::ELSEWHERE;
        };
        Capabilities {
            host: match hello.capabilities.host {
                PluginHost::Gateway => KernelHost::Gateway,
                PluginHost::Elsewhere => KernelHost::Elsewhere,
            },
            honours_run_as: hello.capabilities.run_as,
            uses_callback_listener: false,
        }
    }

    async fn launch(&self, request: LaunchRequest) -> Result<LaunchedKernel, Error> {
        let deadline = Instant::now() + request.timeout;
        let command = self.command_for(&request.spec)?;
        let (mut session, _) = self.start(&command, deadline).await?;
        let op = "launch";
        let answer = match session
            .call(launch_request(&request, deadline), deadline)
            .await
        {
            Ok(fields) => answer_as::<Launched>(&mut session, op, fields).await,
            Err(err) => Err(err),
        };
        let launched = match answer {
            Ok(launched) => launched,
            Err(err) => {
                // A plugin that refused may have started something: its group goes.
                session.kill().await;
                return Err(err.into());
            }
        };
        let ports = [
            launched.connection.shell_port,
            launched.connection.iopub_port,
            launched.connection.stdin_port,
            launched.connection.control_port,
            launched.connection.hb_port,
        ];
        if ports.contains(&0) || launched.connection.ip.trim().is_empty() {
            let err = PluginError::Malformed {
                plugin: session.label().to_owned(),
                op: op.to_owned(),
                reason: "its connection info lacks an ip or a port".to_owned(),
            };
            session.fail(&err).await;
            return Err(err.into());
        }
        tracing::info!(kernel_id = %request.kernel_id, plugin = %session.label(), "plugin launched a kernel");
        let mut connection = launched.connection;
        connection.kernel_name = request.spec.name.clone();
        let process = ExternalKernelProcess::new(
            self,
            &request.kernel_id,
            connection.clone(),
            ProcessParts {
                command,
                data: launched.record,
                interrupt_signal: crate::process::interrupt_signal_of(&request.spec) as i32,
                session,
            },
        );
        Ok(LaunchedKernel {
            connection,
            process: Box::new(process),
        })
    }

    async fn reattach(&self, record: &KernelRecord) -> Result<LaunchedKernel, Error> {
        let unreadable = |why: String| {
            Error::Config(format!(
                "kernel {}: unreadable plugin record: {why}",
                record.kernel_id
            ))
        };
        let stored: ExternalRecord = serde_json::from_value(record.process.clone())
            .map_err(|e| unreadable(e.to_string()))?;
        let command = match &self.plugin {
            Some((command, _)) => command.clone(),
            None => stored.plugin.clone(),
        };
        let deadline = Instant::now() + self.config.hello_timeout + self.config.request_timeout;
        let (mut session, said) = self.start(&command, deadline).await?;
        if !said.capabilities.reattach {
            let label = session.label().to_owned();
            session.close(false).await;
            return Err(Error::Unsupported(format!(
                "plugin {label} cannot re-attach to kernels"
            )));
        }
        let request = Request::new(
            "reattach",
            json!({
                "kernel_id": record.kernel_id,
                "connection": record.connection,
                "record": stored.data,
            }),
        );
        if let Err(err) = session.call(request, deadline).await {
            // Not ours to kill: the kernel may live in another group; this plugin only asked.
            session.close(false).await;
            return Err(err.into());
        }
        let process = ExternalKernelProcess::new(
            self,
            &record.kernel_id,
            record.connection.clone(),
            ProcessParts {
                command,
                data: stored.data,
                interrupt_signal: stored.interrupt_signal,
                session,
            },
        );
        Ok(LaunchedKernel {
            connection: record.connection.clone(),
            process: Box::new(process),
        })
    }
}

/// The `launch` request of `request`.
fn launch_request(request: &LaunchRequest, deadline: Instant) -> Request {
    let spec = &request.spec;
    let remaining = deadline.saturating_duration_since(Instant::now());
    Request::new(
        "launch",
        json!({
            "kernel_id": request.kernel_id,
            "kernelspec": SpecFields {
                name: &spec.name,
                argv: &spec.argv,
                resource_dir: &spec.resource_dir,
                display_name: &spec.display_name,
                language: &spec.language,
                env: &spec.env,
                interrupt_mode: match spec.interrupt_mode {
                    InterruptMode::Signal => "signal",
                    InterruptMode::Message => "message",
                },
                metadata: &spec.metadata,
            },
            "env": request.env,
            "cwd": request.cwd,
            "port_range": {"lo": request.port_range.lo, "hi": request.port_range.hi},
            "timeout_ms": u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX),
            "previous": request.previous,
            "username": request.username,
            "run_as": request.run_as.as_ref().map(|r| json!({
                "uid": r.uid, "gid": r.gid, "home": r.home,
            })),
        }),
    )
}

/// The `process` part of a plugin kernel's [`KernelRecord`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ExternalRecord {
    /// The program that launched the kernel (a kernelspec plugin is run again from it).
    plugin: PluginCommand,
    /// What the plugin's `launch` answer gave as its record.
    #[serde(default)]
    data: Value,
    /// The signal number [`KernelProcess::interrupt`] sends.
    interrupt_signal: i32,
}

/// What a kernel handle is made of besides its names.
struct ProcessParts {
    command: PluginCommand,
    data: Value,
    interrupt_signal: i32,
    session: Session,
}

/// A kernel run by a plugin: every call is a request to the kernel's plugin process.
///
/// Dropped without [`KernelProcess::cleanup`], it kills the plugin's process group unless
/// [`KernelProcess::detach`] was called; either way the plugin sees its stdin close.
#[derive(Debug)]
pub struct ExternalKernelProcess {
    backend: String,
    kernel_id: String,
    connection: ConnectionInfo,
    record: ExternalRecord,
    request_timeout: Duration,
    /// How messages name the plugin.
    label: String,
    conversation: Conversation,
}

impl ExternalKernelProcess {
    fn new(
        backend: &ExternalResourceManager,
        kernel_id: &str,
        connection: ConnectionInfo,
        parts: ProcessParts,
    ) -> ExternalKernelProcess {
        ExternalKernelProcess {
            backend: backend.name().to_owned(),
            kernel_id: kernel_id.to_owned(),
            connection,
            record: ExternalRecord {
                plugin: parts.command,
                data: parts.data,
                interrupt_signal: parts.interrupt_signal,
            },
            request_timeout: backend.config.request_timeout,
            label: parts.session.label().to_owned(),
            conversation: Conversation::start(parts.session),
        }
    }

    /// One request with the usual deadline plus `extra`.
    async fn ask(
        &self,
        op: &'static str,
        fields: Value,
        extra: Duration,
    ) -> Result<serde_json::Map<String, Value>, PluginError> {
        self.conversation
            .call(Request::new(op, fields), self.request_timeout + extra)
            .await
    }

    /// A request answered with a kernel state (`poll`, `terminate`).
    async fn state(
        &self,
        op: &'static str,
        fields: Value,
        extra: Duration,
    ) -> Result<ProcessState, PluginError> {
        let fields = self.ask(op, fields, extra).await?;
        match fields_as::<StateAnswer>(fields) {
            Ok(answer) => Ok(answer.state()),
            Err(reason) => {
                let err = PluginError::Malformed {
                    plugin: self.label.clone(),
                    op: op.to_owned(),
                    reason,
                };
                self.conversation.fail(err.clone());
                Err(err)
            }
        }
    }
}

#[async_trait]
impl KernelProcess for ExternalKernelProcess {
    fn record(&self) -> KernelRecord {
        KernelRecord {
            resource_manager: self.backend.clone(),
            kernel_id: self.kernel_id.clone(),
            connection: self.connection.clone(),
            process: serde_json::to_value(&self.record).unwrap_or(Value::Null),
        }
    }

    async fn poll(&self) -> ProcessState {
        match self.state("poll", json!({}), Duration::ZERO).await {
            Ok(state) => state,
            Err(err) => {
                tracing::debug!(kernel_id = %self.kernel_id, error = %err, "plugin poll failed");
                ProcessState::Unknown
            }
        }
    }

    /// Polls every half second; a plugin that broke the protocol reports
    /// [`ProcessState::Unknown`] at once (nothing can be learnt from it any more).
    async fn wait(&self) -> ProcessState {
        loop {
            if self.conversation.is_broken() {
                return ProcessState::Unknown;
            }
            if let state @ ProcessState::Exited { .. } = self.poll().await {
                return state;
            }
            tokio::time::sleep(WAIT_POLL).await;
        }
    }

    async fn signal(&self, signum: i32) -> Result<(), Error> {
        self.ask("signal", json!({ "signum": signum }), Duration::ZERO)
            .await?;
        Ok(())
    }

    async fn interrupt(&self) -> Result<(), Error> {
        self.signal(self.record.interrupt_signal).await
    }

    async fn terminate(&self, grace: Duration) -> Result<ProcessState, Error> {
        let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        Ok(self
            .state("terminate", json!({ "grace_ms": grace_ms }), grace)
            .await?)
    }

    /// Asks the plugin to remove what it made (`keep_files` on restarts), closes its stdin and
    /// reaps it; its process group goes too, so nothing it started there outlives the kernel.
    async fn cleanup(&self, keep_connection_file: bool) {
        if !self.conversation.is_broken() {
            let fields = json!({ "keep_files": keep_connection_file });
            if let Err(err) = self.ask("cleanup", fields, Duration::ZERO).await {
                tracing::warn!(kernel_id = %self.kernel_id, error = %err, "plugin cleanup failed");
            }
        }
        self.conversation.close(true).await;
    }

    fn log_tail(&self, max_lines: usize) -> String {
        self.conversation.stderr_tail(max_lines)
    }

    fn detach(&self) {
        self.conversation.keep_kernel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(config: Value) -> KernelSpec {
        let json = json!({
            "argv": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "P",
            "language": "python",
            "metadata": {"process_proxy": {"class_name": "external", "config": config}},
        });
        KernelSpec::from_json("p", std::path::Path::new("/specs/p"), &json).expect("spec")
    }

    #[test]
    fn kernelspecs_name_their_plugin_as_an_argv_list() {
        let command = PluginCommand::from_spec(&spec(json!({"plugin": ["python3", "plugin.py"]})))
            .expect("command");
        assert_eq!(command.argv, ["python3", "plugin.py"]);
        assert_eq!(command.cwd, Some(PathBuf::from("/specs/p")));
        for bad in [
            json!({}),
            json!({"plugin": "python3 plugin.py"}),
            json!({"plugin": []}),
            json!({"plugin": [1]}),
        ] {
            let err = PluginCommand::from_spec(&spec(bad.clone())).expect_err("refused");
            assert!(
                err.to_string().contains("\"plugin\": [\"program\""),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn records_round_trip() {
        let record = ExternalRecord {
            plugin: PluginCommand::new(vec!["p".into()]),
            data: json!({"pid": 4}),
            interrupt_signal: 2,
        };
        let value = serde_json::to_value(&record).expect("to json");
        assert_eq!(
            serde_json::from_value::<ExternalRecord>(value).expect("back"),
            record
        );
    }

    #[test]
    fn the_interrupt_signal_follows_eg_alternate_sigint() {
        let mut spec = spec(json!({}));
        assert_eq!(
            crate::process::interrupt_signal_of(&spec) as i32,
            nix::libc::SIGINT
        );
        spec.env.insert("EG_ALTERNATE_SIGINT".into(), "usr2".into());
        assert_eq!(
            crate::process::interrupt_signal_of(&spec) as i32,
            nix::libc::SIGUSR2
        );
    }

    fn venv_bin() -> PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin")
    }

    fn search_path() -> Vec<PathBuf> {
        vec![venv_bin(), PathBuf::from("/usr/bin"), PathBuf::from("/bin")]
    }

    fn quick() -> ExternalConfig {
        ExternalConfig {
            hello_timeout: Duration::from_secs(1),
            ..ExternalConfig::new(search_path())
        }
    }

    fn sh(script: &str) -> PluginCommand {
        PluginCommand::new(vec!["sh".into(), "-c".into(), script.into()])
    }

    #[tokio::test]
    async fn a_plugin_that_does_not_say_hello_properly_is_refused_at_once() {
        let cases = [
            (
                sh("echo nonsense; sleep 30"),
                "is not a JSON object: nonsense",
            ),
            (
                sh("read line; echo '{\"id\": 9, \"ok\": true}'; sleep 30"),
                "(request id 1) with id 9",
            ),
            (
                sh("echo oops >&2; exit 3"),
                "exited during hello (exit code 3); stderr: oops",
            ),
            (sh("sleep 30"), "did not answer hello within 1.0 s"),
            (
                sh(
                    "read line; echo '{\"id\": 1, \"ok\": true, \"protocol\": 2, \"name\": \"p\"}'; sleep 30",
                ),
                "speaks protocol version 2; this gateway speaks version 1",
            ),
            (
                sh(
                    "read line; echo '{\"id\": 1, \"ok\": true, \"protocol\": 1, \"name\": \"a b\"}'; sleep 30",
                ),
                "its name 'a b' must be letters",
            ),
            (
                PluginCommand::new(vec!["no-such-plugin-program".into()]),
                "no-such-plugin-program was not found",
            ),
        ];
        for (command, expected) in cases {
            let started = Instant::now();
            let err = ExternalResourceManager::probe(command.clone(), quick())
                .await
                .expect_err("refused");
            assert!(
                err.to_string().contains(expected),
                "{:?}: {err}",
                command.argv
            );
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "{:?}",
                command.argv
            );
        }
    }

    /// A kernel launched through the Python example plugin survives its handle's detach and a
    /// new plugin process re-attaches to it from the record.
    #[tokio::test]
    async fn e2e_python_plugin_launches_detaches_and_reattaches() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plugin = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/python-plugin/plugin.py");
        let command = PluginCommand::new(vec![
            venv_bin().join("python").display().to_string(),
            plugin.display().to_string(),
            "--runtime-dir".into(),
            dir.path().display().to_string(),
        ]);
        let manager = ExternalResourceManager::probe(command, ExternalConfig::new(search_path()))
            .await
            .expect("hello");
        assert_eq!(manager.name(), "python-plugin");
        assert_eq!(manager.names().class_names, ["examples.python-plugin"]);
        assert_eq!(manager.capabilities().host, KernelHost::Gateway);

        let mut spec = spec(json!({}));
        spec.resource_dir = dir.path().to_path_buf();
        let path = std::env::join_paths(search_path()).expect("PATH");
        let request = LaunchRequest {
            kernel_id: uuid::Uuid::new_v4().to_string(),
            spec,
            env: BTreeMap::from([("PATH".to_owned(), path.to_string_lossy().into_owned())]),
            cwd: None,
            port_range: kernel_launcher::PortRange::ANY,
            timeout: Duration::from_secs(30),
            previous: None,
            username: "u".into(),
            run_as: None,
            placement: Default::default(),
        };
        let launched = manager.launch(request).await.expect("launched");
        assert_eq!(launched.process.poll().await, ProcessState::Running);
        let record = launched.process.record();
        let pid = record.process["data"]["pid"]
            .as_i64()
            .expect("pid in the record");
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        launched.process.detach();
        drop(launched);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(proc_dir.exists(), "the detached kernel must keep running");

        let again = manager.reattach(&record).await.expect("re-attached");
        assert_eq!(again.process.poll().await, ProcessState::Running);
        again.process.signal(0).await.expect("alive");
        let end = again
            .process
            .terminate(Duration::from_secs(5))
            .await
            .expect("terminated");
        assert!(matches!(end, ProcessState::Exited { .. }), "{end:?}");
        again.process.cleanup(false).await;
        let err = manager.reattach(&record).await.expect_err("gone");
        assert!(matches!(err, Error::NotRunning(_)), "{err}");
        let files: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(files.is_empty(), "{files:?}");
    }
}
