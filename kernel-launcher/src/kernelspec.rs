//! Kernelspec discovery and `kernel.json` parsing, including EG's `metadata.process_proxy`.
//!
//! A kernelspec is a directory holding `kernel.json` (reference §6.1–6.2). Its name is the
//! directory name, lowercased. Enterprise Gateway kernelspecs name their process proxy in
//! `metadata.process_proxy.class_name`; gateway_provisioners kernelspecs name a provisioner in
//! `metadata.kernel_provisioner.provisioner_name` (§20). This crate only records which of the two
//! the metadata names, as a [`BackendRef`]; which backend answers to that name (or that none
//! does, and why) is decided by the `resource-managers` crate's `Registry`, where each backend
//! declares the names it answers to.
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use crate::{Error, PortRange};

/// How a kernel is interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterruptMode {
    /// SIGINT (or the kernelspec env's `EG_ALTERNATE_SIGINT`) to the process group.
    Signal,
    /// `interrupt_request` on the control channel.
    Message,
}

/// The backend a kernelspec's `metadata` names, as written there (trimmed). The
/// `resource-managers` crate's `Registry` resolves it to a backend or to the reason there is none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendRef {
    /// The metadata names no backend (no `process_proxy` or `kernel_provisioner` section, or an
    /// empty name in it): the gateway's default backend, `local`.
    Default,
    /// EG's `metadata.process_proxy.class_name`: a Python class name such as
    /// `enterprise_gateway.services.processproxies.distributed.DistributedProcessProxy`, or a
    /// backend's own short name (`ssh`).
    ProcessProxy(String),
    /// gateway_provisioners' `metadata.kernel_provisioner.provisioner_name`, such as
    /// `yarn-provisioner`.
    Provisioner(String),
}

impl BackendRef {
    /// What `metadata` names; `process_proxy` wins over `kernel_provisioner` when both are there.
    pub fn from_metadata(metadata: &serde_json::Value) -> BackendRef {
        let named = |section: &str, key: &str| {
            metadata.get(section).map(|section| {
                section
                    .get(key)
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or("")
                    .trim()
                    .to_owned()
            })
        };
        let reference = match named("process_proxy", "class_name") {
            Some(class) => BackendRef::ProcessProxy(class),
            None => match named("kernel_provisioner", "provisioner_name") {
                Some(provisioner) => BackendRef::Provisioner(provisioner),
                None => BackendRef::Default,
            },
        };
        match reference {
            BackendRef::ProcessProxy(name) | BackendRef::Provisioner(name) if name.is_empty() => {
                BackendRef::Default
            }
            other => other,
        }
    }
}

impl std::fmt::Display for BackendRef {
    /// `the default backend`, `process proxy class 'X'`, `provisioner 'X'`: for messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendRef::Default => f.write_str("the default backend"),
            BackendRef::ProcessProxy(class) => write!(f, "process proxy class '{class}'"),
            BackendRef::Provisioner(name) => write!(f, "provisioner '{name}'"),
        }
    }
}

/// Per-kernelspec configuration (`metadata.process_proxy.config`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpecConfig {
    /// Replaces the global authorized set when non-empty.
    pub authorized_users: Vec<String>,
    /// Added to the global unauthorized set.
    pub unauthorized_users: Vec<String>,
    /// Overrides the gateway's port range.
    pub port_range: Option<PortRange>,
    /// Overrides the gateway's remote hosts.
    pub remote_hosts: Vec<String>,
    /// Every key, raw, for backends that read their own.
    pub raw: serde_json::Map<String, serde_json::Value>,
}

impl SpecConfig {
    /// Reads a `config` object: comma strings (or string lists) are split, trimmed and stripped of
    /// empty items; `port_range` must pass [`PortRange::parse`]. The error text says what is wrong.
    pub fn from_json(
        raw: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<SpecConfig, String> {
        let port_range = match raw.get("port_range") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(text)) => {
                Some(PortRange::parse(text).map_err(|e| e.to_string())?)
            }
            Some(_) => return Err("config.port_range must be a string 'lo..hi'".to_owned()),
        };
        Ok(SpecConfig {
            authorized_users: comma_list(raw, "authorized_users")?,
            unauthorized_users: comma_list(raw, "unauthorized_users")?,
            port_range,
            remote_hosts: comma_list(raw, "remote_hosts")?,
            raw: raw.clone(),
        })
    }
}

/// A comma-separated setting, also accepted as a list of strings.
fn comma_list(
    raw: &serde_json::Map<String, serde_json::Value>,
    key: &str,
) -> Result<Vec<String>, String> {
    let items: Vec<&str> = match raw.get(key) {
        None | Some(serde_json::Value::Null) => return Ok(Vec::new()),
        Some(serde_json::Value::String(text)) => text.split(',').collect(),
        Some(serde_json::Value::Array(values)) => {
            let mut items = Vec::new();
            for value in values {
                let text = value
                    .as_str()
                    .ok_or_else(|| format!("config.{key} must be a comma-separated string"))?;
                items.extend(text.split(','));
            }
            items
        }
        Some(_) => return Err(format!("config.{key} must be a comma-separated string")),
    };
    Ok(items
        .into_iter()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect())
}

/// One kernelspec directory.
#[derive(Debug, Clone)]
pub struct KernelSpec {
    /// Directory name, lowercased.
    pub name: String,
    /// The directory holding kernel.json and resources.
    pub resource_dir: PathBuf,
    /// `argv` template.
    pub argv: Vec<String>,
    /// Display name.
    pub display_name: String,
    /// Language.
    pub language: String,
    /// Kernelspec `env` stanza.
    pub env: BTreeMap<String, String>,
    /// Interrupt mode (default signal).
    pub interrupt_mode: InterruptMode,
    /// `metadata`, raw.
    pub metadata: serde_json::Value,
    /// The backend its metadata names (resolved by the `resource-managers` registry).
    pub backend: BackendRef,
    /// Per-kernelspec config.
    pub config: SpecConfig,
}

impl KernelSpec {
    /// Reads `<dir>/kernel.json`; the name is the directory name lowercased.
    pub fn load(dir: &Path) -> Result<KernelSpec, Error> {
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_lowercase)
            .unwrap_or_default();
        let fail = |reason: String| Error::Spec {
            name: name.clone(),
            reason,
        };
        if !is_valid_name(&name) {
            return Err(fail(format!(
                "invalid kernelspec name {:?}: names use a-z, 0-9, '.', '_' and '-'",
                dir.file_name().unwrap_or_default()
            )));
        }
        let path = dir.join("kernel.json");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| fail(format!("{} is not valid JSON: {e}", path.display())))?;
        KernelSpec::from_json(&name, dir, &json).map_err(fail)
    }

    /// Builds a kernelspec from a parsed `kernel.json`; the error is the reason.
    pub fn from_json(
        name: &str,
        resource_dir: &Path,
        json: &serde_json::Value,
    ) -> Result<KernelSpec, String> {
        let obj = json
            .as_object()
            .ok_or("kernel.json must hold a JSON object")?;
        let argv = match obj.get("argv") {
            Some(serde_json::Value::Array(items)) => {
                let argv: Option<Vec<String>> = items
                    .iter()
                    .map(|v| v.as_str().map(str::to_owned))
                    .collect();
                argv.ok_or("argv must be a list of strings")?
            }
            _ => return Err("argv must be a list of strings".to_owned()),
        };
        if argv.is_empty() {
            return Err("argv is empty".to_owned());
        }
        let text_field = |key: &str| -> Result<String, String> {
            match obj.get(key) {
                None | Some(serde_json::Value::Null) => Ok(String::new()),
                Some(serde_json::Value::String(s)) => Ok(s.clone()),
                Some(_) => Err(format!("{key} must be a string")),
            }
        };
        let display_name = text_field("display_name")?;
        let language = text_field("language")?;
        let env = match obj.get("env") {
            None | Some(serde_json::Value::Null) => BTreeMap::new(),
            Some(serde_json::Value::Object(vars)) => {
                let mut env = BTreeMap::new();
                for (key, value) in vars {
                    let value = value
                        .as_str()
                        .ok_or_else(|| format!("env value of '{key}' must be a string"))?;
                    env.insert(key.clone(), value.to_owned());
                }
                env
            }
            Some(_) => return Err("env must be an object".to_owned()),
        };
        let interrupt_mode = match text_field("interrupt_mode")?.as_str() {
            "" | "signal" => InterruptMode::Signal,
            "message" => InterruptMode::Message,
            other => {
                return Err(format!(
                    "interrupt_mode must be 'signal' or 'message', not '{other}'"
                ));
            }
        };
        let metadata = match obj.get("metadata") {
            None | Some(serde_json::Value::Null) => {
                serde_json::Value::Object(serde_json::Map::new())
            }
            Some(value @ serde_json::Value::Object(_)) => value.clone(),
            Some(_) => return Err("metadata must be an object".to_owned()),
        };
        let backend = BackendRef::from_metadata(&metadata);
        let config_json = metadata
            .get("process_proxy")
            .or_else(|| metadata.get("kernel_provisioner"))
            .and_then(|section| section.get("config"));
        let config = match config_json {
            None | Some(serde_json::Value::Null) => SpecConfig::default(),
            Some(serde_json::Value::Object(raw)) => SpecConfig::from_json(raw)?,
            Some(_) => return Err("metadata config must be an object".to_owned()),
        };
        Ok(KernelSpec {
            name: name.to_owned(),
            resource_dir: resource_dir.to_path_buf(),
            argv,
            display_name,
            language,
            env,
            interrupt_mode,
            metadata,
            backend,
            config,
        })
    }

    /// Resource files served under `/kernelspecs/<name>/`: `kernel.js`, `kernel.css` keyed by file name,
    /// `logo-*` keyed by file name without extension. Values are file names.
    pub fn resources(&self) -> BTreeMap<String, String> {
        let mut resources = BTreeMap::new();
        let Ok(entries) = std::fs::read_dir(&self.resource_dir) else {
            return resources;
        };
        for entry in entries.flatten() {
            let Ok(file_name) = entry.file_name().into_string() else {
                continue;
            };
            if !entry.path().is_file() {
                continue;
            }
            if file_name == "kernel.js" || file_name == "kernel.css" {
                resources.insert(file_name.clone(), file_name);
            } else if file_name.starts_with("logo-") {
                let key = Path::new(&file_name)
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or(&file_name)
                    .to_owned();
                resources.insert(key, file_name);
            }
        }
        resources
    }

    /// Resolves a resource path inside the resource dir; `None` for anything that escapes it or does not exist.
    pub fn resource_path(&self, relative: &str) -> Option<PathBuf> {
        let relative = Path::new(relative);
        if relative.as_os_str().is_empty()
            || !relative
                .components()
                .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return None;
        }
        let base = self.resource_dir.canonicalize().ok()?;
        let resolved = base.join(relative).canonicalize().ok()?;
        (resolved.starts_with(&base) && resolved.is_file()).then_some(resolved)
    }

    /// Where this kernelspec's Python environment lives, when it sits in
    /// `<prefix>/share/jupyter/kernels/<name>`: the `<prefix>`. Used to run the environment's own
    /// interpreter and for the `{prefix}` placeholder.
    pub fn prefix(&self) -> Option<PathBuf> {
        let kernels = self.resource_dir.parent()?;
        let jupyter = kernels.parent()?;
        let share = jupyter.parent()?;
        let named = |p: &Path, n: &str| p.file_name().is_some_and(|f| f == n);
        (named(kernels, "kernels") && named(jupyter, "jupyter") && named(share, "share"))
            .then(|| share.parent().map(Path::to_path_buf))
            .flatten()
    }
}

/// Whether a kernelspec name is valid (`^[a-z0-9._-]+$` after lowercasing).
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
}

/// All kernelspecs found in a search path; earlier directories win on name collisions.
///
/// Kernelspecs naming a backend the gateway does not run are loaded (they are valid files) and
/// kept in `specs`; the gateway decides how to show them and refuses to start them with the
/// registry's reason.
#[derive(Debug, Clone, Default)]
pub struct KernelSpecs {
    /// Loaded specs by name.
    pub specs: BTreeMap<String, KernelSpec>,
    /// Specs that failed to load, by name, with the reason (logged, not served).
    pub failed: BTreeMap<String, String>,
}

impl KernelSpecs {
    /// Scans `<dir>/*/kernel.json` for every dir in `search_path` (each a `.../kernels` directory).
    pub fn discover(search_path: &[PathBuf]) -> KernelSpecs {
        let mut found = KernelSpecs::default();
        for dir in search_path {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            let mut candidates: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.join("kernel.json").is_file())
                .collect();
            candidates.sort();
            for candidate in candidates {
                let raw_name = candidate
                    .file_name()
                    .map(|n| n.to_string_lossy().to_lowercase())
                    .unwrap_or_default();
                if found.specs.contains_key(&raw_name) || found.failed.contains_key(&raw_name) {
                    continue;
                }
                match KernelSpec::load(&candidate) {
                    Ok(spec) => {
                        found.specs.insert(spec.name.clone(), spec);
                    }
                    Err(err) => {
                        tracing::warn!(path = %candidate.display(), "skipping kernelspec: {err}");
                        let reason = match err {
                            Error::Spec { reason, .. } => reason,
                            other => other.to_string(),
                        };
                        found.failed.insert(raw_name, reason);
                    }
                }
            }
        }
        found
    }

    /// Looks a spec up by name (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&KernelSpec> {
        self.specs.get(&name.to_lowercase())
    }
}

/// The standard Jupyter kernelspec search path, given the relevant environment values:
/// `$JUPYTER_PATH/*/kernels`, the user data dir, `{python prefix}/share/jupyter/kernels`,
/// `/usr/local/share/jupyter/kernels`, `/usr/share/jupyter/kernels`, then `extra` dirs.
///
/// `jupyter_path` is split on `:`, and each entry gets `/kernels`; `home` gives
/// `~/.local/share/jupyter/kernels`; `extra` dirs are kernels directories already. Duplicates
/// are dropped, keeping the first occurrence.
pub fn search_path(
    jupyter_path: Option<&str>,
    home: Option<&Path>,
    python_prefixes: &[PathBuf],
    extra: &[PathBuf],
) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut push = |p: PathBuf| {
        if !dirs.contains(&p) {
            dirs.push(p);
        }
    };
    for entry in jupyter_path
        .unwrap_or("")
        .split(':')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        push(Path::new(entry).join("kernels"));
    }
    if let Some(home) = home {
        push(home.join(".local/share/jupyter/kernels"));
    }
    for prefix in python_prefixes {
        push(prefix.join("share/jupyter/kernels"));
    }
    push(PathBuf::from("/usr/local/share/jupyter/kernels"));
    push(PathBuf::from("/usr/share/jupyter/kernels"));
    for dir in extra {
        push(dir.clone());
    }
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[track_caller]
    fn check_backend(metadata: serde_json::Value, expected: BackendRef) {
        assert_eq!(
            BackendRef::from_metadata(&metadata),
            expected,
            "metadata {metadata}"
        );
    }

    #[test]
    fn backend_references() {
        let class = |n: &str| BackendRef::ProcessProxy(n.to_owned());
        let provisioner = |n: &str| BackendRef::Provisioner(n.to_owned());
        let pp = "enterprise_gateway.services.processproxies";
        check_backend(json!({}), BackendRef::Default);
        check_backend(json!({"debugger": true}), BackendRef::Default);
        check_backend(json!({"process_proxy": {}}), BackendRef::Default);
        check_backend(
            json!({"process_proxy": {"class_name": "  "}}),
            BackendRef::Default,
        );
        check_backend(
            json!({"kernel_provisioner": {"provisioner_name": ""}}),
            BackendRef::Default,
        );
        check_backend(
            json!({"process_proxy": {"class_name": format!(" {pp}.yarn.YarnClusterProcessProxy ")}}),
            class(&format!("{pp}.yarn.YarnClusterProcessProxy")),
        );
        check_backend(
            json!({"process_proxy": {"class_name": "ssh"}}),
            class("ssh"),
        );
        check_backend(
            json!({"process_proxy": {"class_name": 3}}),
            BackendRef::Default,
        );
        check_backend(
            json!({"kernel_provisioner": {"provisioner_name": "yarn-provisioner"}}),
            provisioner("yarn-provisioner"),
        );
        check_backend(
            json!({"process_proxy": {"class_name": "batch"}, "kernel_provisioner": {"provisioner_name": "yarn-provisioner"}}),
            class("batch"),
        );
        assert_eq!(
            provisioner("yarn-provisioner").to_string(),
            "provisioner 'yarn-provisioner'"
        );
        assert_eq!(class("x.Y").to_string(), "process proxy class 'x.Y'");
    }

    #[track_caller]
    fn check_config(config: serde_json::Value, expected: Result<SpecConfig, &str>) {
        let serde_json::Value::Object(raw) = config else {
            panic!("config must be an object");
        };
        let expected = expected.map(|mut c| {
            c.raw = raw.clone();
            c
        });
        assert_eq!(SpecConfig::from_json(&raw), expected.map_err(str::to_owned));
    }

    #[test]
    fn spec_config() {
        let users = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        check_config(json!({}), Ok(SpecConfig::default()));
        check_config(
            json!({"authorized_users": " alice, bob ,,", "unauthorized_users": "root", "remote_hosts": ["h1,h2", "h3"], "port_range": "30000..31000", "other": 1}),
            Ok(SpecConfig {
                authorized_users: users(&["alice", "bob"]),
                unauthorized_users: users(&["root"]),
                remote_hosts: users(&["h1", "h2", "h3"]),
                port_range: Some(PortRange {
                    lo: 30000,
                    hi: 31000,
                }),
                raw: serde_json::Map::new(),
            }),
        );
        check_config(
            json!({"port_range": "10000..10999"}),
            Err(
                "Port range validation failed for range: '10000..10999'.  Range size must be at least 1000 as specified by env EG_MIN_PORT_RANGE_SIZE",
            ),
        );
        check_config(
            json!({"authorized_users": 3}),
            Err("config.authorized_users must be a comma-separated string"),
        );
    }

    fn write(dir: &Path, name: &str, json: &str) -> std::io::Result<PathBuf> {
        let spec_dir = dir.join(name);
        std::fs::create_dir_all(&spec_dir)?;
        std::fs::write(spec_dir.join("kernel.json"), json)?;
        Ok(spec_dir)
    }

    #[track_caller]
    fn check_load(json: &str, expected: Result<(), &str>) {
        let tmp = tempfile::tempdir().ok();
        let Some(dir) = tmp.as_ref().map(|t| t.path().to_path_buf()) else {
            panic!("tempdir");
        };
        let loaded = write(&dir, "k", json)
            .map_err(Error::from)
            .and_then(|d| KernelSpec::load(&d));
        match (loaded, expected) {
            (Ok(_), Ok(())) => {}
            (Err(e), Err(text)) => assert_eq!(e.to_string(), format!("kernelspec k: {text}")),
            (got, want) => panic!("{json}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn kernel_json_validation() {
        check_load(r#"{"argv": ["python", "-f", "{connection_file}"]}"#, Ok(()));
        check_load(r#"{"argv": []}"#, Err("argv is empty"));
        check_load(
            r#"{"argv": "python"}"#,
            Err("argv must be a list of strings"),
        );
        check_load(r#"{"argv": [1]}"#, Err("argv must be a list of strings"));
        check_load(r#"[]"#, Err("kernel.json must hold a JSON object"));
        check_load(
            r#"{"argv": ["x"], "env": {"A": 1}}"#,
            Err("env value of 'A' must be a string"),
        );
        check_load(
            r#"{"argv": ["x"], "interrupt_mode": "psychic"}"#,
            Err("interrupt_mode must be 'signal' or 'message', not 'psychic'"),
        );
        check_load(
            r#"{"argv": ["x"], "metadata": {"process_proxy": {"config": {"port_range": "1..2"}}}}"#,
            Err(
                "Port range validation failed for range: '1..2'.  Range size must be at least 1000 as specified by env EG_MIN_PORT_RANGE_SIZE",
            ),
        );
    }

    #[test]
    fn load_full_spec() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let dir = write(
            tmp.path(),
            "Spark_Python",
            r#"{"argv": ["python", "{connection_file}"], "display_name": "Spark", "language": "python",
                "interrupt_mode": "message", "env": {"SPARK_HOME": "/opt/spark"},
                "metadata": {"process_proxy": {"class_name": "enterprise_gateway.services.processproxies.yarn.YarnClusterProcessProxy",
                             "config": {"authorized_users": "alice", "yarn_endpoint": "http://rm:8088/ws/v1/cluster"}}}}"#,
        )?;
        let spec = KernelSpec::load(&dir)?;
        assert_eq!(spec.name, "spark_python");
        assert_eq!(spec.display_name, "Spark");
        assert_eq!(spec.interrupt_mode, InterruptMode::Message);
        assert_eq!(
            spec.backend,
            BackendRef::ProcessProxy(
                "enterprise_gateway.services.processproxies.yarn.YarnClusterProcessProxy".into()
            )
        );
        assert_eq!(spec.config.authorized_users, vec!["alice".to_owned()]);
        assert_eq!(
            spec.config
                .raw
                .get("yarn_endpoint")
                .and_then(|v| v.as_str()),
            Some("http://rm:8088/ws/v1/cluster")
        );
        assert_eq!(
            spec.env.get("SPARK_HOME").map(String::as_str),
            Some("/opt/spark")
        );
        assert_eq!(spec.prefix(), None);
        Ok(())
    }

    #[test]
    fn discovery_order_names_and_failures() -> Result<(), Box<dyn std::error::Error>> {
        let first = tempfile::tempdir()?;
        let second = tempfile::tempdir()?;
        write(
            first.path(),
            "Python3",
            r#"{"argv": ["first"], "display_name": "First"}"#,
        )?;
        write(
            second.path(),
            "python3",
            r#"{"argv": ["second"], "display_name": "Second"}"#,
        )?;
        write(
            second.path(),
            "r",
            r#"{"argv": ["R"], "display_name": "R"}"#,
        )?;
        write(second.path(), "bad name", r#"{"argv": ["x"]}"#)?;
        write(second.path(), "broken", r#"{"argv": "#)?;
        std::fs::create_dir_all(second.path().join("no-kernel-json"))?;
        let specs = KernelSpecs::discover(&[
            first.path().to_path_buf(),
            PathBuf::from("/does/not/exist"),
            second.path().to_path_buf(),
        ]);
        assert_eq!(specs.specs.keys().collect::<Vec<_>>(), vec!["python3", "r"]);
        assert_eq!(
            specs.get("PYTHON3").map(|s| s.display_name.as_str()),
            Some("First")
        );
        assert_eq!(
            specs.failed.keys().collect::<Vec<_>>(),
            vec!["bad name", "broken"]
        );
        assert!(
            specs
                .failed
                .get("broken")
                .is_some_and(|r| r.contains("not valid JSON"))
        );
        Ok(())
    }

    #[test]
    fn resources_and_paths() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let outside = tempfile::tempdir()?;
        let dir = write(tmp.path(), "k", r#"{"argv": ["x"]}"#)?;
        for f in [
            "logo-64x64.png",
            "logo-svg.svg",
            "kernel.js",
            "kernel.css",
            "other.txt",
        ] {
            std::fs::write(dir.join(f), "x")?;
        }
        std::fs::create_dir(dir.join("sub"))?;
        std::fs::write(dir.join("sub/inner.txt"), "x")?;
        std::fs::write(outside.path().join("secret"), "s")?;
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.join("escape"))?;
        std::os::unix::fs::symlink(dir.join("kernel.js"), dir.join("alias.js"))?;
        let spec = KernelSpec::load(&dir)?;
        let resources = spec.resources();
        let expected: BTreeMap<String, String> = [
            ("kernel.css", "kernel.css"),
            ("kernel.js", "kernel.js"),
            ("logo-64x64", "logo-64x64.png"),
            ("logo-svg", "logo-svg.svg"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(resources, expected);

        let canonical = dir.canonicalize()?;
        let check = |rel: &str, expected: Option<PathBuf>| {
            assert_eq!(spec.resource_path(rel), expected, "path {rel:?}")
        };
        check("logo-64x64.png", Some(canonical.join("logo-64x64.png")));
        check("./sub/inner.txt", Some(canonical.join("sub/inner.txt")));
        check("alias.js", Some(canonical.join("kernel.js")));
        check("missing.png", None);
        check("sub", None);
        check("", None);
        check("../k/kernel.js", None);
        check("sub/../kernel.js", None);
        check("/etc/passwd", None);
        check("escape", None);
        Ok(())
    }

    #[test]
    fn prefix_of_a_venv_spec() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let kernels = tmp.path().join("venv/share/jupyter/kernels");
        let dir = write(&kernels, "python3", r#"{"argv": ["python"]}"#)?;
        assert_eq!(
            KernelSpec::load(&dir)?.prefix(),
            Some(tmp.path().join("venv"))
        );
        Ok(())
    }

    #[test]
    fn standard_search_path() {
        let got = search_path(
            Some("/a:/b::/a"),
            Some(Path::new("/home/u")),
            &[PathBuf::from("/venv")],
            &[
                PathBuf::from("/extra/kernels"),
                PathBuf::from("/usr/share/jupyter/kernels"),
            ],
        );
        let want: Vec<PathBuf> = [
            "/a/kernels",
            "/b/kernels",
            "/home/u/.local/share/jupyter/kernels",
            "/venv/share/jupyter/kernels",
            "/usr/local/share/jupyter/kernels",
            "/usr/share/jupyter/kernels",
            "/extra/kernels",
        ]
        .into_iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(got, want);
        assert_eq!(search_path(None, None, &[], &[]).len(), 2);
    }
}
