//! The local backend: each kernel a child process in its own process group.
use std::path::PathBuf;

/// Settings of the local backend.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// Where connection files go (`kernel-<id>.json`, mode 0600).
    pub runtime_dir: PathBuf,
    /// Where per-kernel logs go (`kernel-<id>.log`).
    pub log_dir: PathBuf,
    /// IP the kernel binds (127.0.0.1).
    pub ip: String,
    /// The gateway's PATH, to resolve a relative argv[0] (kernels may get no PATH of their own).
    pub search_path: Vec<PathBuf>,
}

/// The local resource manager (`local`, EG's `LocalProcessProxy`).
#[derive(Debug)]
pub struct LocalResourceManager {
    config: LocalConfig,
}

impl LocalResourceManager {
    /// A local backend.
    pub fn new(config: LocalConfig) -> LocalResourceManager {
        LocalResourceManager { config }
    }
}
