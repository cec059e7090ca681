//! The JSON shapes clients see. These are the only `Serialize` types of the HTTP layer; each is
//! built explicitly from the manager's or the launcher's own types.
use std::collections::BTreeMap;

use kernel_launcher::{InterruptMode, KernelSpec};
use serde::Serialize;
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;

use crate::Identity;
use crate::manager::KernelSnapshot;

/// `GET /api`.
#[derive(Debug, Clone, Serialize)]
pub struct VersionModel {
    /// What Jupyter Server's gateway client checks: a jupyter_server-style version it accepts.
    pub version: &'static str,
    /// The Enterprise Gateway version this gateway behaves as.
    pub gateway_version: &'static str,
    /// This implementation's own version.
    pub enterprise_gateway_rs: &'static str,
}

/// `GET /api/me`: jupyter_server's identity model with the gateway's additions.
#[derive(Debug, Clone, Serialize)]
pub struct MeModel {
    /// jupyter_server's `identity` object.
    pub identity: IdentityModel,
    /// jupyter_server's `permissions` (none are asked for through this gateway).
    pub permissions: BTreeMap<String, Vec<String>>,
    /// The caller's groups.
    pub groups: Vec<String>,
    /// The caller's roles (`admin`, `impersonate`).
    pub roles: Vec<&'static str>,
    /// Which authenticator accepted the request (`none` when authentication is off).
    pub authenticator: &'static str,
}

/// jupyter_server's `identity` fields.
#[derive(Debug, Clone, Serialize)]
pub struct IdentityModel {
    /// The authenticated user; kernels started by this caller get it as `KERNEL_USERNAME`.
    pub username: String,
    /// `username` again: no authenticator here supplies a separate display name.
    pub name: String,
    /// `username` again, for the same reason.
    pub display_name: String,
    /// Always `null`: no authenticator supplies it. The three keys stay so jupyter_server's
    /// identity parser finds the shape it expects.
    pub initials: Option<String>,
    /// Always `null` (see `initials`).
    pub avatar_url: Option<String>,
    /// Always `null` (see `initials`).
    pub color: Option<String>,
}

impl From<&Identity> for MeModel {
    fn from(identity: &Identity) -> MeModel {
        MeModel {
            identity: IdentityModel {
                username: identity.user.clone(),
                name: identity.user.clone(),
                display_name: identity.user.clone(),
                initials: None,
                avatar_url: None,
                color: None,
            },
            permissions: BTreeMap::new(),
            groups: identity.groups.clone(),
            roles: identity.roles.names(),
            authenticator: identity.method,
        }
    }
}

/// EG's kernel model.
#[derive(Debug, Clone, Serialize)]
pub struct KernelModel {
    /// The kernel's UUID, as in every `/api/kernels/<id>` path.
    pub id: String,
    /// The kernelspec it was started from (after any profile or default was applied).
    pub name: String,
    /// Last activity, always `YYYY-MM-DDTHH:MM:SS.ffffffZ` (Jupyter Server parses it strictly).
    pub last_activity: String,
    /// The newest `status` the kernel published on iopub (`idle`, `busy`, `restarting`), or
    /// `starting` while the start is in flight.
    pub execution_state: String,
    /// WebSocket connections open to the kernel now; idle culling with `cull_connected` off
    /// spares kernels where this is non-zero.
    pub connections: usize,
    /// The user the kernel belongs to (its `KERNEL_USERNAME`); lists show a caller only their
    /// own kernels, or everybody's to an admin.
    pub owner: String,
    /// Why the kernel is not usable; omitted when there is none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The kernel profile it runs under; omitted when none, so EG's model is unchanged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
}

/// A kernel profile as `GET /api/profiles` shows it (who may use it and the backend settings
/// stay with the administrator).
#[derive(Debug, Clone, Serialize)]
pub struct ProfileModel {
    /// What a client passes as `profile` when it starts a kernel.
    pub name: String,
    /// The administrator's text for people choosing a profile.
    pub description: String,
    /// Kernelspecs it applies to (empty: all).
    pub kernelspecs: Vec<String>,
    /// The size it gives a kernel; the backend-specific settings are not shown.
    pub resources: ResourcesModel,
    /// Whether the caller's groups make it their default.
    pub default: bool,
}

/// A profile's resources; unset ones are omitted.
#[derive(Debug, Clone, Serialize)]
pub struct ResourcesModel {
    /// Memory in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    /// Whole CPUs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// Whole GPUs (backends that place kernels on GPU nodes use it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpus: Option<u32>,
}

impl ProfileModel {
    /// The model of `profile` for a member of `groups`.
    pub fn new(profile: &crate::profiles::Profile, groups: &[String]) -> ProfileModel {
        ProfileModel {
            name: profile.name.clone(),
            description: profile.description.clone(),
            kernelspecs: profile.kernelspecs.clone(),
            resources: ResourcesModel {
                memory: profile.resources.memory,
                cpus: profile.resources.cpus,
                gpus: profile.resources.gpus,
            },
            default: profile
                .default_for_groups
                .iter()
                .any(|g| groups.contains(g)),
        }
    }
}

/// `last_activity`'s format: UTC, six fractional digits, `Z`.
const LAST_ACTIVITY: &[BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");

/// Formats a time as EG's `last_activity`.
pub fn format_last_activity(at: time::OffsetDateTime) -> String {
    let utc = at.to_offset(time::UtcOffset::UTC);
    utc.format(LAST_ACTIVITY).unwrap_or_else(|_| {
        // Only years outside 0..=9999 fail to format; clamp rather than fail the request.
        "1970-01-01T00:00:00.000000Z".to_owned()
    })
}

impl From<KernelSnapshot> for KernelModel {
    fn from(snapshot: KernelSnapshot) -> KernelModel {
        KernelModel {
            last_activity: format_last_activity(snapshot.last_activity),
            id: snapshot.id,
            name: snapshot.name,
            execution_state: snapshot.execution_state,
            connections: snapshot.connections,
            owner: snapshot.username,
            reason: snapshot.reason.filter(|reason| !reason.is_empty()),
            profile: snapshot.profile,
        }
    }
}

/// One kernel as the admin page sees it (`GET /api/admin/kernels`, admin role only): EG's model
/// plus where and how long it has been running. EG's own kernel model stays as it is.
#[derive(Debug, Clone, Serialize)]
pub struct AdminKernelModel {
    /// EG's fields.
    #[serde(flatten)]
    pub kernel: KernelModel,
    /// The registered name of the resource manager that runs it (`local`, `ssh`, `yarn`, ...).
    pub backend: String,
    /// The IP address in its connection info: where its ZeroMQ ports are (empty while it starts).
    pub host: String,
    /// Restarts since it was started, by clients and by the auto-restarter alike.
    pub restarts: u32,
    /// When it was started, in `last_activity`'s format.
    pub created: String,
}

impl From<KernelSnapshot> for AdminKernelModel {
    fn from(snapshot: KernelSnapshot) -> AdminKernelModel {
        AdminKernelModel {
            backend: snapshot.backend.clone(),
            host: snapshot.host.clone(),
            restarts: snapshot.restarts,
            created: format_last_activity(snapshot.created),
            kernel: KernelModel::from(snapshot),
        }
    }
}

/// `GET /readyz`.
#[derive(Debug, Clone, Serialize)]
pub struct ReadyModel {
    /// Whether every check passed.
    pub ready: bool,
    /// Each check's verdict, the gateway's own first.
    pub checks: Vec<CheckModel>,
}

/// One readiness check's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct CheckModel {
    /// What was checked (`callback_listener`, `store`, or a check an embedder added).
    pub name: String,
    /// Whether it passed; the gateway is ready only when every check is.
    pub ok: bool,
    /// Why not, when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl CheckModel {
    /// The model of one verdict.
    pub fn new(name: &str, verdict: Result<(), String>) -> CheckModel {
        CheckModel {
            name: name.to_owned(),
            ok: verdict.is_ok(),
            reason: verdict.err(),
        }
    }
}

/// `GET /api/kernelspecs`.
#[derive(Debug, Clone, Serialize)]
pub struct KernelSpecsModel {
    /// The kernelspec a start without `name` gets (`default_kernel_name`).
    pub default: String,
    /// The kernelspecs by name; those no backend here runs are listed too, with `unavailable`.
    pub kernelspecs: BTreeMap<String, KernelSpecModel>,
}

/// One kernelspec as `GET /api/kernelspecs[/<name>]` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct KernelSpecModel {
    /// Its directory's name, which is what clients pass to start it.
    pub name: String,
    /// The six `kernel.json` keys jupyter_client 6 reports.
    pub spec: SpecModel,
    /// Resource file URLs by key (`logo-64x64`, `kernel.js`, ...).
    pub resources: BTreeMap<String, String>,
    /// Why this gateway cannot start the kernelspec (a backend it does not support), when it
    /// cannot; absent otherwise. Clients that do not know the key ignore it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
}

/// The `spec` part of a kernelspec model.
#[derive(Debug, Clone, Serialize)]
pub struct SpecModel {
    /// The launch command with `{connection_file}` and the launcher variables still unfilled.
    pub argv: Vec<String>,
    /// Variables the kernelspec adds to the kernel's environment.
    pub env: BTreeMap<String, String>,
    /// What a notebook front end shows in its kernel menu.
    pub display_name: String,
    /// The kernel's language as its kernelspec says (`python`, `scala`, `R`).
    pub language: String,
    /// `signal` (the gateway sends SIGINT) or `message` (an `interrupt_request` on control).
    pub interrupt_mode: &'static str,
    /// The kernelspec's `metadata` object as written (EG's `process_proxy` lives here), `{}`
    /// when absent.
    pub metadata: serde_json::Value,
}

impl KernelSpecModel {
    /// The model of `spec`, with resource URLs rooted at `base_url` (normalised, ends with `/`);
    /// `unavailable` is the reason no backend here runs it, if that is so.
    pub fn new(spec: &KernelSpec, base_url: &str, unavailable: Option<String>) -> KernelSpecModel {
        let resources = spec
            .resources()
            .into_iter()
            .map(|(key, file)| (key, format!("{base_url}kernelspecs/{}/{file}", spec.name)))
            .collect();
        KernelSpecModel {
            name: spec.name.clone(),
            spec: SpecModel {
                argv: spec.argv.clone(),
                env: spec.env.clone(),
                display_name: spec.display_name.clone(),
                language: spec.language.clone(),
                interrupt_mode: match spec.interrupt_mode {
                    InterruptMode::Signal => "signal",
                    InterruptMode::Message => "message",
                },
                metadata: if spec.metadata.is_null() {
                    serde_json::Value::Object(Default::default())
                } else {
                    spec.metadata.clone()
                },
            },
            resources,
            unavailable,
        }
    }
}

/// jupyter_server's session model (with EG's `notebook.path`).
#[derive(Debug, Clone, Serialize)]
pub struct SessionModel {
    /// The session's UUID (not the kernel's).
    pub id: String,
    /// The document path the front end opened the session for.
    pub path: String,
    /// The front end's name for it, if it gave one.
    pub name: Option<String>,
    /// Session type (`notebook`, `console`, ...).
    #[serde(rename = "type")]
    pub kind: String,
    /// Its kernel's model, as `GET /api/kernels/<id>` returns it.
    pub kernel: KernelModel,
    /// `{"path": ...}` again, for clients older than jupyter_server's `path` key.
    pub notebook: NotebookModel,
}

/// `{"path": ...}` in a session model.
#[derive(Debug, Clone, Serialize)]
pub struct NotebookModel {
    /// The same path as the session's.
    pub path: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_activity_always_has_microseconds_and_z() {
        let whole = time::macros::datetime!(2024-05-01 12:00:00 UTC);
        assert_eq!(format_last_activity(whole), "2024-05-01T12:00:00.000000Z");
        let offset = time::macros::datetime!(2024-05-01 14:00:00.1234567 +02:00);
        assert_eq!(format_last_activity(offset), "2024-05-01T12:00:00.123456Z");
    }
}
