//! Kernel profiles: named resource configurations ("small", "large") that administrators define
//! and users or groups may pick when they start a kernel, plus the sizes of the warm pools.
//!
//! A [`Profile`] says who may use it (users and `groups`; both empty: everybody), which
//! kernelspecs it applies to (empty: all), and what it sets: resources (exported to the kernel as
//! Enterprise Gateway's `KERNEL_MEMORY`, `KERNEL_CPUS`, `KERNEL_GPUS`), environment variables, and
//! the backends' [`Placement`] (local process limits, an SSH host group, Spark settings for YARN).
//! A profile may be the default of some groups: a start that names no profile gets the first
//! profile, in file order, that is a default of one of the owner's groups and fits the kernelspec.
//!
//! The binary reads these from the profiles file and hands a [`ProfileSet`] to
//! [`crate::KernelManager::set_profiles`], at start and on every SIGHUP.
use std::collections::BTreeMap;

use resource_managers::Placement;

/// Resources a profile gives a kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// Memory in bytes.
    pub memory: Option<u64>,
    /// CPUs.
    pub cpus: Option<u32>,
    /// GPUs.
    pub gpus: Option<u32>,
}

/// One kernel profile.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Profile {
    /// Its name, as clients ask for it (`KERNEL_PROFILE` or the start body's `profile`).
    pub name: String,
    /// What it is for, shown by `GET /api/profiles`.
    pub description: String,
    /// Users who may use it.
    pub users: Vec<String>,
    /// Groups whose members may use it.
    pub groups: Vec<String>,
    /// Kernelspecs it applies to; empty means every kernelspec.
    pub kernelspecs: Vec<String>,
    /// Groups whose members get it when they ask for no profile.
    pub default_for_groups: Vec<String>,
    /// Resources.
    pub resources: Resources,
    /// Variables added to the kernel's environment (over the client's).
    pub env: BTreeMap<String, String>,
    /// What the backends apply.
    pub placement: Placement,
}

impl Profile {
    /// Whether `user`, a member of `groups`, may use this profile.
    pub fn allows(&self, user: &str, groups: &[String]) -> bool {
        (self.users.is_empty() && self.groups.is_empty())
            || self.users.iter().any(|u| u == user)
            || self.groups.iter().any(|g| groups.contains(g))
    }

    /// Whether the profile applies to kernelspec `spec`.
    pub fn fits(&self, spec: &str) -> bool {
        self.kernelspecs.is_empty() || self.kernelspecs.iter().any(|k| k == spec)
    }

    /// The variables this profile puts in a kernel's environment: its own, the resources under
    /// EG's names, and `KERNEL_PROFILE`. Each resource is both the request and the limit
    /// (`KERNEL_CPUS` and `KERNEL_CPUS_LIMIT`, ...: a kernel pod gets what its profile names and
    /// no more), unless the profile's own `env` sets the limit otherwise.
    pub fn kernel_env(&self) -> BTreeMap<String, String> {
        let mut env = self.env.clone();
        let resources = [
            (
                "KERNEL_MEMORY",
                self.resources.memory.map(|m| m.to_string()),
            ),
            ("KERNEL_CPUS", self.resources.cpus.map(|c| c.to_string())),
            ("KERNEL_GPUS", self.resources.gpus.map(|g| g.to_string())),
        ];
        for (name, value) in resources {
            if let Some(value) = value {
                env.entry(format!("{name}_LIMIT"))
                    .or_insert_with(|| value.clone());
                env.insert(name.to_owned(), value);
            }
        }
        env.insert("KERNEL_PROFILE".to_owned(), self.name.clone());
        env
    }
}

/// How many kernels of a kernelspec (under a profile, or none) are kept started ahead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSize {
    /// The kernelspec.
    pub kernelspec: String,
    /// The profile, if any.
    pub profile: Option<String>,
    /// Kernels kept ready.
    pub size: usize,
}

/// Every profile and pool size; replaced as a whole on reload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProfileSet {
    /// Profiles in file order.
    pub profiles: Vec<Profile>,
    /// Warm pools.
    pub pools: Vec<PoolSize>,
}

impl ProfileSet {
    /// The profile called `name`.
    pub fn get(&self, name: &str) -> Option<&Profile> {
        self.profiles.iter().find(|p| p.name == name)
    }

    /// The profiles `user` (a member of `groups`) may use.
    pub fn usable_by<'a>(
        &'a self,
        user: &'a str,
        groups: &'a [String],
    ) -> impl Iterator<Item = &'a Profile> + 'a {
        self.profiles.iter().filter(move |p| p.allows(user, groups))
    }

    /// The default profile of a member of `groups` for kernelspec `spec`, if any.
    pub fn default_for(&self, user: &str, groups: &[String], spec: &str) -> Option<&Profile> {
        self.profiles.iter().find(|p| {
            p.default_for_groups.iter().any(|g| groups.contains(g))
                && p.allows(user, groups)
                && p.fits(spec)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(name: &str) -> Profile {
        Profile {
            name: name.to_owned(),
            ..Profile::default()
        }
    }

    #[test]
    fn who_may_use_a_profile_and_which_is_a_groups_default() {
        let open = profile("small");
        let large = Profile {
            users: vec!["alice".into()],
            groups: vec!["spark".into()],
            kernelspecs: vec!["spark_python".into()],
            default_for_groups: vec!["spark".into()],
            ..profile("large")
        };
        let set = ProfileSet {
            profiles: vec![open.clone(), large.clone()],
            pools: Vec::new(),
        };
        let spark = vec!["spark".to_owned()];
        assert!(open.allows("bob", &[]));
        assert!(large.allows("alice", &[]));
        assert!(large.allows("bob", &spark));
        assert!(!large.allows("bob", &[]));
        assert!(large.fits("spark_python") && !large.fits("python3"));
        assert_eq!(
            set.default_for("bob", &spark, "spark_python")
                .map(|p| p.name.as_str()),
            Some("large")
        );
        assert_eq!(set.default_for("bob", &spark, "python3"), None);
        assert_eq!(set.default_for("bob", &[], "spark_python"), None);
        let names: Vec<&str> = set.usable_by("bob", &[]).map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["small"]);
    }

    #[test]
    fn the_kernel_env_names_the_profile_and_its_resources() {
        let p = Profile {
            resources: Resources {
                memory: Some(1 << 30),
                cpus: Some(2),
                gpus: None,
            },
            env: BTreeMap::from([("KERNEL_SPARK_CONF".into(), "x".into())]),
            ..profile("medium")
        };
        let env = p.kernel_env();
        assert_eq!(env["KERNEL_PROFILE"], "medium");
        assert_eq!(env["KERNEL_MEMORY"], "1073741824");
        assert_eq!(env["KERNEL_MEMORY_LIMIT"], "1073741824");
        assert_eq!(env["KERNEL_CPUS"], "2");
        assert!(!env.contains_key("KERNEL_GPUS"));
        assert_eq!(env["KERNEL_SPARK_CONF"], "x");
    }
}
