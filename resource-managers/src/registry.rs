//! The [`Registry`]: backends by name, and which backend a kernelspec names.
//!
//! A kernelspec's metadata names its backend in one of two vocabularies, kept as written in
//! [`kernel_launcher::BackendRef`]: an EG process-proxy class name or a gateway_provisioners
//! provisioner name. Each backend states the names it answers to ([`ResourceManager::names`]);
//! its own [`ResourceManager::name`] is always one of its class names. [`Registry::resolve`] turns
//! a kernelspec into its backend, or into an [`Unavailable`] saying why there is none.

use std::collections::BTreeMap;
use std::sync::Arc;

use kernel_launcher::{BackendRef, KernelSpec};

use crate::ResourceManager;

/// The name of the backend a kernelspec gets when its metadata names none.
pub const DEFAULT_BACKEND: &str = "local";

/// Where EG's process-proxy classes live.
const EG_PROXY_MODULE: &str = "enterprise_gateway.services.processproxies.";

/// EG process-proxy classes (after [`EG_PROXY_MODULE`]) that no built-in backend implements: a
/// kernelspec naming one that no registered backend claims gets a "not supported yet" reason.
const EG_CLASSES_NOT_YET: [&str; 6] = [
    "k8s.KubernetesProcessProxy",
    "crd.CustomResourceProcessProxy",
    "spark_operator.SparkOperatorProcessProxy",
    "docker_swarm.DockerSwarmProcessProxy",
    "docker_swarm.DockerProcessProxy",
    "conductor.ConductorClusterProcessProxy",
];

/// The built-in backends and the names each answers to (after [`EG_PROXY_MODULE`] for class
/// names). Each built-in backend's [`ResourceManager::names`] comes from here; the registry also
/// reads it when nobody claims a name, so a kernelspec naming a built-in backend this gateway
/// does not run (not compiled in, or its callback listener could not bind) is
/// [`Unavailable::NotRegistered`] under that backend's name, not an unknown class.
const BUILT_IN: [(&str, &str, &str); 3] = [
    (
        "local",
        "processproxy.LocalProcessProxy",
        "local-provisioner",
    ),
    (
        "ssh",
        "distributed.DistributedProcessProxy",
        "distributed-provisioner",
    ),
    ("yarn", "yarn.YarnClusterProcessProxy", "yarn-provisioner"),
];

/// The names by which kernelspecs choose a backend, besides the backend's own
/// [`ResourceManager::name`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendNames {
    /// Values of `metadata.process_proxy.class_name`: EG's class names (e.g.
    /// `enterprise_gateway.services.processproxies.distributed.DistributedProcessProxy`) or
    /// names of the backend's own choosing.
    pub class_names: Vec<String>,
    /// Values of `metadata.kernel_provisioner.provisioner_name` (gateway_provisioners, e.g.
    /// `distributed-provisioner`).
    pub provisioner_names: Vec<String>,
}

impl BackendNames {
    /// The names of built-in backend `backend` (`local`, `ssh`, `yarn`); none for other names.
    pub(crate) fn built_in(backend: &str) -> BackendNames {
        let mut names = BackendNames::default();
        for (owner, class, provisioner) in BUILT_IN {
            if owner == backend {
                names.class_names.push(format!("{EG_PROXY_MODULE}{class}"));
                names.provisioner_names.push(provisioner.to_owned());
            }
        }
        names
    }

    /// Names from string slices (the form built-in backends use).
    pub fn new(class_names: &[&str], provisioner_names: &[&str]) -> BackendNames {
        let owned = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect();
        BackendNames {
            class_names: owned(class_names),
            provisioner_names: owned(provisioner_names),
        }
    }
}

/// Why a kernelspec has no backend in this registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unavailable {
    /// The kernelspec names a class or provisioner no registered backend answers to. The gateway
    /// lists such kernelspecs as unavailable, with this reason, and refuses to start them.
    Unclaimed {
        /// What the kernelspec names, and that nobody here runs it.
        reason: String,
    },
    /// The kernelspec names a backend by its short name (or names none, which means
    /// [`DEFAULT_BACKEND`]) and no backend of that name is registered, e.g. because the
    /// launcher callback listener could not bind. Listed as usual; starts fail.
    NotRegistered {
        /// The kernelspec.
        spec: String,
        /// The backend name it needs.
        backend: String,
    },
}

impl Unavailable {
    /// The reason to show in a kernelspec listing: only for [`Unavailable::Unclaimed`].
    pub fn listed_reason(&self) -> Option<&str> {
        match self {
            Unavailable::Unclaimed { reason } => Some(reason),
            Unavailable::NotRegistered { .. } => None,
        }
    }
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unavailable::Unclaimed { reason } => f.write_str(reason),
            Unavailable::NotRegistered { spec, backend } => write!(
                f,
                "kernelspec {spec} needs the resource manager {backend:?}, which this gateway does not run"
            ),
        }
    }
}

impl std::error::Error for Unavailable {}

/// Backends by name, and the class and provisioner names each answers to. An embedding program
/// registers its own next to (or instead of) the built-in ones.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    backends: BTreeMap<String, Arc<dyn ResourceManager>>,
    /// Class name → backend name.
    class_names: BTreeMap<String, String>,
    /// Provisioner name → backend name.
    provisioner_names: BTreeMap<String, String>,
    /// Replaces [`DEFAULT_BACKEND`] when set.
    default: Option<String>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Adds a backend under its name, with the names it answers to. A backend registered under a
    /// name already taken replaces the earlier one (and its claims); a class or provisioner name
    /// claimed twice belongs to the backend registered last.
    pub fn register(&mut self, backend: Arc<dyn ResourceManager>) {
        let name = backend.name().to_owned();
        self.class_names.retain(|_, owner| *owner != name);
        self.provisioner_names.retain(|_, owner| *owner != name);
        let names = backend.names();
        for class in names.class_names {
            self.class_names.insert(class, name.clone());
        }
        for provisioner in names.provisioner_names {
            self.provisioner_names.insert(provisioner, name.clone());
        }
        self.backends.insert(name, backend);
    }

    /// Makes `name` the backend of kernelspecs whose metadata names none (instead of
    /// [`DEFAULT_BACKEND`]).
    pub fn set_default(&mut self, name: &str) {
        self.default = Some(name.to_owned());
    }

    /// Looks a backend up by its name (as in [`crate::KernelRecord::resource_manager`]).
    pub fn get(&self, name: &str) -> Option<Arc<dyn ResourceManager>> {
        self.backends.get(name).cloned()
    }

    /// Names of all backends.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.backends.keys().map(String::as_str)
    }

    /// The backend that runs `spec`, or why there is none.
    pub fn resolve(&self, spec: &KernelSpec) -> Result<Arc<dyn ResourceManager>, Unavailable> {
        self.resolve_ref(&spec.name, &spec.backend)
    }

    /// The backend `reference` names, for kernelspec `spec_name` (used in the reasons):
    ///
    /// * [`BackendRef::Default`] → the default backend;
    /// * a class or provisioner name some backend claims → that backend;
    /// * a class name that is a plain name (letters, digits, `_`, `-`) → the backend of that
    ///   name, or [`Unavailable::NotRegistered`];
    /// * a name of a built-in backend that is not registered → [`Unavailable::NotRegistered`];
    /// * anything else → [`Unavailable::Unclaimed`], saying what the kernelspec names.
    pub fn resolve_ref(
        &self,
        spec_name: &str,
        reference: &BackendRef,
    ) -> Result<Arc<dyn ResourceManager>, Unavailable> {
        let by_name = |backend: &str| {
            self.get(backend).ok_or_else(|| Unavailable::NotRegistered {
                spec: spec_name.to_owned(),
                backend: backend.to_owned(),
            })
        };
        match reference {
            BackendRef::Default => by_name(self.default.as_deref().unwrap_or(DEFAULT_BACKEND)),
            BackendRef::ProcessProxy(class) => {
                if let Some(owner) = self.class_names.get(class) {
                    return by_name(owner);
                }
                if is_plain_name(class) {
                    return by_name(class);
                }
                let short = class.strip_prefix(EG_PROXY_MODULE);
                if let Some((owner, ..)) = BUILT_IN.iter().find(|(_, c, _)| Some(*c) == short) {
                    return by_name(owner);
                }
                let not_yet = short.is_some_and(|short| EG_CLASSES_NOT_YET.contains(&short));
                let reason = if not_yet {
                    format!(
                        "kernelspec '{spec_name}' uses {class}, which this gateway does not support yet"
                    )
                } else {
                    format!(
                        "kernelspec '{spec_name}' uses process proxy class '{class}', which this gateway does not know"
                    )
                };
                Err(Unavailable::Unclaimed { reason })
            }
            BackendRef::Provisioner(provisioner) => match self.provisioner_names.get(provisioner) {
                Some(owner) => by_name(owner),
                None => match BUILT_IN.iter().find(|(.., p)| p == provisioner) {
                    Some((owner, ..)) => by_name(owner),
                    None => Err(Unavailable::Unclaimed {
                        reason: format!(
                            "kernelspec '{spec_name}' uses provisioner '{provisioner}', which this gateway does not support yet"
                        ),
                    }),
                },
            },
        }
    }
}

/// A backend's short name: ASCII letters, digits, `_` and `-`.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use async_trait::async_trait;

    use super::*;
    use crate::{Error, KernelRecord, LaunchRequest, LaunchedKernel};

    /// A backend that only has names.
    #[derive(Debug)]
    struct Named(&'static str, BackendNames);

    #[async_trait]
    impl ResourceManager for Named {
        fn name(&self) -> &str {
            self.0
        }
        fn names(&self) -> BackendNames {
            self.1.clone()
        }
        async fn launch(&self, _request: LaunchRequest) -> Result<LaunchedKernel, Error> {
            Err(Error::Unsupported("names only".into()))
        }
        async fn reattach(&self, _record: &KernelRecord) -> Result<LaunchedKernel, Error> {
            Err(Error::Unsupported("names only".into()))
        }
    }

    const PP: &str = "enterprise_gateway.services.processproxies";

    fn registry() -> Registry {
        let mut registry = Registry::new();
        registry.register(Arc::new(Named("local", BackendNames::built_in("local"))));
        registry.register(Arc::new(Named("ssh", BackendNames::built_in("ssh"))));
        registry
    }

    #[track_caller]
    fn check(registry: &Registry, reference: BackendRef, expected: Result<&str, Unavailable>) {
        let got = registry
            .resolve_ref("spec", &reference)
            .map(|backend| backend.name().to_owned());
        assert_eq!(got, expected.map(str::to_owned), "{reference:?}");
    }

    fn class(name: &str) -> BackendRef {
        BackendRef::ProcessProxy(name.to_owned())
    }

    fn unclaimed(reason: &str) -> Unavailable {
        Unavailable::Unclaimed {
            reason: reason.to_owned(),
        }
    }

    #[test]
    fn names_resolve_to_the_backends_that_claim_them() {
        let registry = registry();
        check(&registry, BackendRef::Default, Ok("local"));
        check(
            &registry,
            class(&format!("{PP}.processproxy.LocalProcessProxy")),
            Ok("local"),
        );
        check(
            &registry,
            class(&format!("{PP}.distributed.DistributedProcessProxy")),
            Ok("ssh"),
        );
        check(&registry, class("ssh"), Ok("ssh"));
        check(
            &registry,
            BackendRef::Provisioner("distributed-provisioner".into()),
            Ok("ssh"),
        );
        check(
            &registry,
            class("yarn"),
            Err(Unavailable::NotRegistered {
                spec: "spec".into(),
                backend: "yarn".into(),
            }),
        );
        // A built-in backend this gateway does not run: listed, not startable.
        for yarn in [
            class(&format!("{PP}.yarn.YarnClusterProcessProxy")),
            BackendRef::Provisioner("yarn-provisioner".into()),
        ] {
            check(
                &registry,
                yarn,
                Err(Unavailable::NotRegistered {
                    spec: "spec".into(),
                    backend: "yarn".into(),
                }),
            );
        }
        assert!(BackendNames::built_in("pods").class_names.is_empty());
        check(
            &registry,
            class(&format!("{PP}.k8s.KubernetesProcessProxy")),
            Err(unclaimed(&format!(
                "kernelspec 'spec' uses {PP}.k8s.KubernetesProcessProxy, which this gateway does not support yet"
            ))),
        );
        check(
            &registry,
            class("acme.proxies.Custom"),
            Err(unclaimed(
                "kernelspec 'spec' uses process proxy class 'acme.proxies.Custom', which this gateway does not know",
            )),
        );
        check(
            &registry,
            BackendRef::Provisioner("kubernetes-provisioner".into()),
            Err(unclaimed(
                "kernelspec 'spec' uses provisioner 'kubernetes-provisioner', which this gateway does not support yet",
            )),
        );
    }

    #[test]
    fn embedders_claim_any_name_and_replace_backends() {
        let mut registry = registry();
        let k8s = format!("{PP}.k8s.KubernetesProcessProxy");
        registry.register(Arc::new(Named(
            "pods",
            BackendNames::new(&[&k8s, "acme.proxies.Custom"], &["kubernetes-provisioner"]),
        )));
        check(&registry, class(&k8s), Ok("pods"));
        check(&registry, class("acme.proxies.Custom"), Ok("pods"));
        check(
            &registry,
            BackendRef::Provisioner("kubernetes-provisioner".into()),
            Ok("pods"),
        );
        // Registered again without its claims: they go with the old registration.
        registry.register(Arc::new(Named("pods", BackendNames::default())));
        assert!(registry.resolve_ref("spec", &class(&k8s)).is_err());
        check(&registry, class("pods"), Ok("pods"));
        // The default backend can be another one.
        registry.set_default("pods");
        check(&registry, BackendRef::Default, Ok("pods"));
    }

    #[test]
    fn reasons_for_listings_and_starts() {
        let not_registered = Unavailable::NotRegistered {
            spec: "python3".into(),
            backend: "local".into(),
        };
        assert_eq!(not_registered.listed_reason(), None);
        assert_eq!(
            not_registered.to_string(),
            "kernelspec python3 needs the resource manager \"local\", which this gateway does not run"
        );
        assert_eq!(unclaimed("why").listed_reason(), Some("why"));
    }
}
