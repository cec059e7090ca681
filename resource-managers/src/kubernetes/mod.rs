//! The `kubernetes` backend and its thin client of the Kubernetes REST API (cargo feature
//! `kubernetes`).
//!
//! * [`ClusterConfig`] says where the API server is and how to authenticate: in-cluster
//!   ([`ClusterConfig::in_cluster`], the pod's service-account token and CA) or a kubeconfig
//!   file ([`ClusterConfig::from_kubeconfig`]); the gateway binary hands in what it found, the
//!   library reads no environment.
//! * [`KubeClient`] makes the calls a kernel backend needs — create, get, list by label
//!   selector, watch (a stream of [`WatchEvent`]s), delete with a grace period and propagation
//!   policy — over JSON objects; API errors keep the server's `Status` ([`KubeError::Api`]).
//!   It is built on the workspace's `reqwest` rather than `kube` + `k8s-openapi`: the backend
//!   needs five verbs on a few fields, and `k8s-openapi` alone costs minutes of compile time on
//!   the project's 2-core machines (CI has a 90-minute budget).
//! * [`pod`] renders a kernelspec's pod template natively, with client values substituted into
//!   the parsed YAML (never pasted into its text); [`validate`] checks names, quantities and ids
//!   before anything reaches the API server.
//! * [`backend`] is the resource manager: [`KubernetesResourceManager`] (EG's
//!   `KubernetesProcessProxy`, gateway_provisioners' `kubernetes-provisioner`) and
//!   [`KubernetesKernelProcess`], one kernel as a pod.

pub mod backend;
pub mod client;
pub mod config;
pub mod pod;
pub mod validate;
pub mod yaml;

pub use backend::{
    KubernetesConfig, KubernetesKernelProcess, KubernetesResourceManager, LaunchMode,
};
pub use client::{KubeClient, KubeError, Watch, WatchEvent};
pub use config::{ClusterAuth, ClusterConfig, SERVICE_ACCOUNT_DIR};
