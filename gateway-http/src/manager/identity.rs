//! Impersonation of local kernels: with `impersonation_enabled`, a local kernel runs as the OS
//! account named by `KERNEL_USERNAME`, with that account's home directory.
//!
//! EG only exports `EG_IMPERSONATION_ENABLED` and leaves the switch to launch scripts, so its
//! local kernels always run as the gateway user (EG PR#971). Here the local backend switches
//! itself, which needs the gateway to run as root. The decisions, all at start time:
//!
//! * an account that does not exist on this system: 403, saying so;
//! * the gateway is not root and the account is not the gateway's own: 500 with a reason naming
//!   the misconfiguration (the request is fine; the gateway cannot honour it);
//! * the account is the gateway's own: nothing to switch;
//! * which users may start kernels at all is the job of `authorized_users` /
//!   `unauthorized_users` (root is refused by default), checked before this.
//!
//! Remote backends are not affected: their launch scripts act on `EG_IMPERSONATION_ENABLED`.
use std::collections::BTreeMap;

use nix::unistd::{User, geteuid};
use resource_managers::RunAs;

use super::error::ManagerError;
use crate::Fault;

/// The account a local kernel of `username` runs as, when it is not the gateway's own; sets
/// `HOME` and `USER` in the kernel's environment accordingly.
pub(crate) fn local_account(
    username: &str,
    env: &mut BTreeMap<String, String>,
) -> Result<Option<RunAs>, ManagerError> {
    let user = User::from_name(username)
        .map_err(|err| ManagerError::Internal(format!("cannot look up user '{username}': {err}")))?
        .ok_or_else(|| ManagerError::Forbidden {
            reason: format!(
                "User '{username}' does not exist on this system, so no kernel can run as that user (impersonation is enabled). Ensure KERNEL_USERNAME is set to an appropriate value and retry the request."
            ),
            message: String::new(),
        })?;
    let euid = geteuid();
    if euid != user.uid && !euid.is_root() {
        return Err(ManagerError::LaunchFailed {
            reason: format!(
                "impersonation is enabled but the gateway does not run as root, so it cannot start a local kernel as user '{username}'"
            ),
            fault: Fault::Internal,
        });
    }
    env.insert("HOME".to_owned(), user.dir.to_string_lossy().into_owned());
    env.insert("USER".to_owned(), user.name.clone());
    if euid == user.uid {
        return Ok(None);
    }
    Ok(Some(RunAs {
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        home: user.dir,
    }))
}
