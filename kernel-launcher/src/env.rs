//! The kernel's environment, composed as Enterprise Gateway does (reference §5).
use std::collections::BTreeMap;

use crate::{Error, KernelSpec};

/// Which client and gateway variables may reach kernels.
#[derive(Debug, Clone, Default)]
pub struct EnvPolicy {
    /// Request variables accepted besides `KERNEL_*` (`["*"]` = all).
    pub client_envs: Vec<String>,
    /// Gateway process variables passed on.
    pub inherited_envs: Vec<String>,
}

/// Validates and filters a request's `env` object: non-`KERNEL_*` keys not allowed are dropped;
/// non-string, oversized (> 4096) or values containing `$`, backtick, CR, LF, NUL are refused.
pub fn filter_request_env(request: &serde_json::Map<String, serde_json::Value>, policy: &EnvPolicy) -> Result<BTreeMap<String, String>, Error> {
    todo!()
}

/// Inputs of [`compose`].
#[derive(Debug, Clone)]
pub struct EnvInputs<'a> {
    /// The filtered request env, or `None` when the request had no `env` (then the kernel inherits the gateway env).
    pub request: Option<&'a BTreeMap<String, String>>,
    /// The gateway process environment.
    pub gateway: &'a BTreeMap<String, String>,
    /// The policy.
    pub policy: &'a EnvPolicy,
    /// The kernelspec.
    pub spec: &'a KernelSpec,
    /// Kernel id.
    pub kernel_id: &'a str,
    /// Effective user name (request KERNEL_USERNAME or the gateway's OS user).
    pub username: &'a str,
    /// Impersonation flag, exported as `EG_IMPERSONATION_ENABLED`.
    pub impersonation_enabled: bool,
}

/// Composes the launch environment in EG's order (§5.3 steps 1–7).
pub fn compose(inputs: &EnvInputs<'_>) -> BTreeMap<String, String> {
    todo!()
}
