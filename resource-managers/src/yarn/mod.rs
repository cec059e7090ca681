//! A thin, typed client of the Hadoop YARN ResourceManager (RM) REST API.
//!
//! * [`YarnClientConfig`] says where the RMs are — EG's `yarn_endpoint` / `alt_yarn_endpoint`
//!   ([`YarnClientConfig::from_endpoints`]) or `yarn-site.xml` in a Hadoop configuration
//!   directory handed in as a path ([`YarnClientConfig::from_site`], parsed by [`SiteConfig`]) —
//!   plus [`Auth`] and an optional CA bundle.
//! * [`YarnClient`] finds the active RM by probing `/ws/v1/cluster/info` (never redirected by a
//!   standby), caches it, and re-probes on a 307, a connection failure or a standby answer. It
//!   never follows redirects, keeps Hadoop's `hadoop.auth` cookie per RM, and offers the calls
//!   a kernel backend needs: [`YarnClient::find_app_by_tag_or_name`], [`YarnClient::app`],
//!   [`YarnClient::app_state`], [`YarnClient::kill`] (202, then poll until final),
//!   [`YarnClient::queue_partition_usage`], and REST submission.
//! * [`types`] holds the serde envelopes; errors are [`YarnError`] (its own module, which the
//!   client and the `yarn-site.xml` reader both use).
//! * The `yarn` resource manager is built on the client:
//!   [`YarnResourceManager`] runs a kernelspec's `spark-submit` and follows the application;
//!   [`YarnKernelProcess`] is one kernel as a YARN application.
//!
//! ```no_run
//! # async fn demo() -> Result<(), resource_managers::yarn::YarnError> {
//! use resource_managers::yarn::{Auth, YarnClient, YarnClientConfig};
//!
//! let config = YarnClientConfig::from_endpoints("http://rm1:8088/ws/v1/cluster", Some("http://rm2:8088"))
//!     .with_auth(Auth::Simple { user: "alice".into() });
//! let client = YarnClient::new(config)?;
//! if let Some(app) = client.find_app_by_tag_or_name("3f1c…", 1_700_000_000_000).await? {
//!     println!("{} is {} on {:?}", app.id, app.state, app.am_host());
//!     client.kill(&app.id).await?;
//! }
//! # Ok(())
//! # }
//! ```

pub mod backend;
mod client;
mod error;
mod record;
mod site;
pub mod types;

pub use backend::{YarnConfig, YarnKernelProcess, YarnResourceManager, YarnSecurity};
pub use client::{AppsQuery, Auth, YarnClient, YarnClientConfig};
pub use error::YarnError;
pub use site::SiteConfig;
pub use types::{App, AppState, ClusterInfo, NewApplication, SubmissionContext};
