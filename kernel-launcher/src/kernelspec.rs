//! Kernelspec discovery and `kernel.json` parsing, including EG's `metadata.process_proxy`.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::{Error, PortRange};

/// How a kernel is interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterruptMode {
    /// SIGINT (or the kernelspec env's `EG_ALTERNATE_SIGINT`) to the process group.
    Signal,
    /// `interrupt_request` on the control channel.
    Message,
}

/// Which resource manager a kernelspec names, from EG's `process_proxy.class_name`
/// (or, later, gateway_provisioners' `kernel_provisioner.provisioner_name`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// A resource-manager name (`local`, `ssh`, `yarn`, or a name an embedding program registered).
    Named(String),
    /// The kernelspec names something this gateway cannot run; the text says what and why.
    Unsupported(String),
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
    /// Which backend runs it.
    pub backend: Backend,
    /// Per-kernelspec config.
    pub config: SpecConfig,
}

impl KernelSpec {
    /// Reads `<dir>/kernel.json`; the name is the directory name lowercased.
    pub fn load(dir: &Path) -> Result<KernelSpec, Error> {
        todo!()
    }
    /// Resource files served under `/kernelspecs/<name>/`: `kernel.js`, `kernel.css` keyed by file name,
    /// `logo-*` keyed by file name without extension. Values are file names.
    pub fn resources(&self) -> BTreeMap<String, String> {
        todo!()
    }
    /// Resolves a resource path inside the resource dir; `None` for anything that escapes it or does not exist.
    pub fn resource_path(&self, relative: &str) -> Option<PathBuf> {
        todo!()
    }
}

/// All kernelspecs found in a search path; earlier directories win on name collisions.
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
        todo!()
    }
    /// Looks a spec up by name (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&KernelSpec> {
        todo!()
    }
}

/// The standard Jupyter kernelspec search path, given the relevant environment values:
/// `$JUPYTER_PATH/*/kernels`, the user data dir, `{python prefix}/share/jupyter/kernels`,
/// `/usr/local/share/jupyter/kernels`, `/usr/share/jupyter/kernels`, then `extra` dirs.
pub fn search_path(jupyter_path: Option<&str>, home: Option<&Path>, python_prefixes: &[PathBuf], extra: &[PathBuf]) -> Vec<PathBuf> {
    todo!()
}
