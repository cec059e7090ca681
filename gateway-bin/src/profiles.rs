//! The profiles file (`--profiles_file`): kernel profiles and warm-pool sizes as TOML tables,
//! read at start and again on every SIGHUP.
//!
//! Profiles are structured (lists, nested tables), unlike the scalar options of `options.rs`, so
//! they live in a file of their own; that is also the file a reload re-reads, while the main
//! configuration stays as the gateway started with it.
//!
//! ```toml
//! [[profiles]]
//! name = "small"
//! description = "1 CPU, 512 MiB"
//! groups = ["students"]              # users = [...]; neither: everybody
//! kernelspecs = ["python3"]          # empty: every kernelspec
//! default_for_groups = ["students"]
//! env = { KERNEL_SPARK_OPTS = "..." } # KERNEL_* or names allowed by client_envs
//! resources = { memory = "512M", cpus = 1, gpus = 0 }
//! local = { memory = "512M", cpu_time = 3600, cpus = 1 } # memory and cpus default to resources
//! yarn = { queue = "small", driver_memory = "1g", executor_memory = "2g", executor_count = 2, executor_cores = 1 }
//! ssh = { hosts = ["10.0.0.5", "10.0.0.6"] } # replaces remote_hosts
//! # Pods the gateway renders (EG_KUBERNETES_LAUNCH=native); refused for launcher-made pods.
//! kubernetes = { node_selector = { disktype = "ssd" }, pod_template = "/etc/eg/pod.yaml.j2", tolerations = [
//!   { key = "gpu", operator = "Equal", value = "a100", effect = "NoSchedule" } ] }
//!
//! [[pools]]
//! kernelspec = "python3"
//! profile = "small"   # optional
//! size = 2
//! ```
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, bail};
use gateway_http::profiles::{PoolSize, Profile, ProfileSet, Resources};
use kernel_launcher::env::EnvPolicy;
use resource_managers::{Placement, PodPlacement, ProcessLimits, SparkSettings, Toleration};
use serde::Deserialize;

/// The largest pool a file may ask for.
const MAX_POOL: usize = 64;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    profiles: Vec<RawProfile>,
    #[serde(default)]
    pools: Vec<RawPool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    kernelspecs: Vec<String>,
    #[serde(default)]
    default_for_groups: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    resources: RawResources,
    #[serde(default)]
    local: RawLocal,
    #[serde(default)]
    yarn: RawYarn,
    #[serde(default)]
    ssh: RawSsh,
    #[serde(default)]
    kubernetes: RawKubernetes,
}

/// A size: bytes as an integer, or a string with a binary unit (`512M`, `2G`, `1.5g`).
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
enum Size {
    Bytes(u64),
    Text(String),
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawResources {
    memory: Option<Size>,
    cpus: Option<u32>,
    gpus: Option<u32>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLocal {
    memory: Option<Size>,
    cpu_time: Option<u64>,
    cpus: Option<u32>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawYarn {
    queue: Option<String>,
    driver_memory: Option<String>,
    executor_memory: Option<String>,
    executor_count: Option<u32>,
    executor_cores: Option<u32>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSsh {
    #[serde(default)]
    hosts: Vec<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawKubernetes {
    #[serde(default)]
    node_selector: BTreeMap<String, String>,
    #[serde(default)]
    tolerations: Vec<RawToleration>,
    pod_template: Option<std::path::PathBuf>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawToleration {
    key: Option<String>,
    operator: Option<String>,
    value: Option<String>,
    effect: Option<String>,
    toleration_seconds: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    kernelspec: String,
    profile: Option<String>,
    size: usize,
}

/// Reads and validates the profiles file.
pub(crate) fn load(path: &Path, policy: &EnvPolicy) -> anyhow::Result<ProfileSet> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the profiles file {}", path.display()))?;
    parse(&text, policy).with_context(|| format!("profiles file {}", path.display()))
}

/// Parses and validates the text of a profiles file.
pub(crate) fn parse(text: &str, policy: &EnvPolicy) -> anyhow::Result<ProfileSet> {
    let file: File = toml::from_str(text).context("not a valid profiles file")?;
    let mut names = BTreeSet::new();
    let mut profiles = Vec::new();
    for raw in file.profiles {
        let name = raw.name.trim().to_owned();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            bail!("profile name {name:?}: use letters, digits, '-', '_' and '.'");
        }
        if !names.insert(name.clone()) {
            bail!("profile {name:?} is defined twice");
        }
        profiles.push(profile(name, raw, policy)?);
    }
    let mut pools = Vec::new();
    let mut seen = BTreeSet::new();
    for raw in file.pools {
        if let Some(profile) = &raw.profile {
            let Some(found) = profiles.iter().find(|p: &&Profile| &p.name == profile) else {
                bail!(
                    "the pool of {:?} names the unknown profile {profile:?}",
                    raw.kernelspec
                );
            };
            if !found.fits(&raw.kernelspec) {
                bail!(
                    "the pool of {:?} names the profile {profile:?}, which does not apply to that kernelspec",
                    raw.kernelspec
                );
            }
        }
        if raw.size > MAX_POOL {
            bail!(
                "the pool of {:?} asks for {} kernels; at most {MAX_POOL}",
                raw.kernelspec,
                raw.size
            );
        }
        if !seen.insert((raw.kernelspec.clone(), raw.profile.clone())) {
            bail!("the pool of {:?} is defined twice", raw.kernelspec);
        }
        pools.push(PoolSize {
            kernelspec: raw.kernelspec,
            profile: raw.profile,
            size: raw.size,
        });
    }
    Ok(ProfileSet { profiles, pools })
}

fn profile(name: String, raw: RawProfile, policy: &EnvPolicy) -> anyhow::Result<Profile> {
    for (key, value) in &raw.env {
        if !policy.accepts_client(key) {
            bail!("profile {name:?}: env {key:?} is neither KERNEL_* nor allowed by client_envs");
        }
        if key == "KERNEL_USERNAME" || key == "KERNEL_ID" || key == "KERNEL_PROFILE" {
            bail!("profile {name:?}: env {key:?} is the gateway's to set");
        }
        if value.contains('\0') || key.contains('=') || key.is_empty() {
            bail!("profile {name:?}: env {key:?} cannot be passed to a process");
        }
    }
    let memory = raw
        .resources
        .memory
        .map(|s| bytes(&s))
        .transpose()
        .with_context(|| format!("profile {name:?}: resources.memory"))?;
    let local_memory = raw
        .local
        .memory
        .map(|s| bytes(&s))
        .transpose()
        .with_context(|| format!("profile {name:?}: local.memory"))?;
    for (what, value) in [
        ("driver_memory", &raw.yarn.driver_memory),
        ("executor_memory", &raw.yarn.executor_memory),
    ] {
        if let Some(value) = value
            && !is_spark_size(value)
        {
            bail!("profile {name:?}: yarn.{what} {value:?} is not a Spark size such as 4g");
        }
    }
    if let Some(queue) = &raw.yarn.queue
        && (queue.is_empty() || queue.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        bail!("profile {name:?}: yarn.queue {queue:?} is not a queue name");
    }
    if let Some(host) = raw
        .ssh
        .hosts
        .iter()
        .find(|h| h.trim().is_empty() || h.chars().any(char::is_whitespace))
    {
        bail!("profile {name:?}: ssh host {host:?} is not a host name");
    }
    let kubernetes = PodPlacement {
        node_selector: raw.kubernetes.node_selector,
        tolerations: raw
            .kubernetes
            .tolerations
            .into_iter()
            .map(|t| Toleration {
                key: t.key,
                operator: t.operator,
                value: t.value,
                effect: t.effect,
                toleration_seconds: t.toleration_seconds,
            })
            .collect(),
        pod_template: raw.kubernetes.pod_template,
    };
    resource_managers::kubernetes::validate::pod_placement(&kubernetes)
        .map_err(|e| anyhow::anyhow!("profile {name:?}: {e}"))?;
    if let Some(path) = &kubernetes.pod_template
        && !path.is_file()
    {
        bail!(
            "profile {name:?}: kubernetes.pod_template {} is not a file",
            path.display()
        );
    }
    Ok(Profile {
        name,
        description: raw.description,
        users: raw.users,
        groups: raw.groups,
        kernelspecs: raw.kernelspecs,
        default_for_groups: raw.default_for_groups,
        resources: Resources {
            memory,
            cpus: raw.resources.cpus,
            gpus: raw.resources.gpus,
        },
        env: raw.env,
        placement: Placement {
            limits: ProcessLimits {
                memory_bytes: local_memory.or(memory),
                cpu_seconds: raw.local.cpu_time,
                cpus: raw.local.cpus.or(raw.resources.cpus),
            },
            hosts: raw.ssh.hosts,
            spark: SparkSettings {
                queue: raw.yarn.queue,
                driver_memory: raw.yarn.driver_memory,
                executor_memory: raw.yarn.executor_memory,
                executor_count: raw.yarn.executor_count,
                executor_cores: raw.yarn.executor_cores,
            },
            kubernetes,
        },
    })
}

/// Bytes of a size (binary units K, M, G, T; an optional trailing `i`/`B`).
fn bytes(size: &Size) -> anyhow::Result<u64> {
    let text = match size {
        Size::Bytes(n) => return Ok(*n),
        Size::Text(text) => text.trim(),
    };
    let lower = text.to_ascii_lowercase();
    let trimmed = lower.trim_end_matches('b').trim_end_matches('i');
    let (number, shift) = match trimmed.chars().last() {
        Some('k') => (&trimmed[..trimmed.len() - 1], 10),
        Some('m') => (&trimmed[..trimmed.len() - 1], 20),
        Some('g') => (&trimmed[..trimmed.len() - 1], 30),
        Some('t') => (&trimmed[..trimmed.len() - 1], 40),
        _ => (trimmed, 0),
    };
    let value: f64 = number
        .trim()
        .parse()
        .with_context(|| format!("{text:?} is not a size such as 512M or 2G"))?;
    if !value.is_finite() || value <= 0.0 {
        bail!("{text:?} is not a positive size");
    }
    let bytes = value * (1u64 << shift) as f64;
    if bytes > u64::MAX as f64 {
        bail!("{text:?} is too large");
    }
    Ok(bytes as u64)
}

/// Spark's size syntax: digits and an optional unit.
fn is_spark_size(text: &str) -> bool {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &text[digits.len()..];
    !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit())
        && ["", "k", "m", "g", "t", "kb", "mb", "gb", "tb"]
            .contains(&unit.to_ascii_lowercase().as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[[profiles]]
name = "small"
description = "half a gig"
groups = ["students"]
kernelspecs = ["python3"]
default_for_groups = ["students"]
env = { KERNEL_FLAVOUR = "small" }
resources = { memory = "512M", cpus = 1 }

[[profiles]]
name = "large"
users = ["alice"]
yarn = { queue = "big", driver_memory = "4g", executor_memory = "8g", executor_count = 4, executor_cores = 2 }
ssh = { hosts = ["127.0.0.2", "127.0.0.3"] }
local = { memory = 2147483648, cpu_time = 60 }
kubernetes = { node_selector = { disktype = "ssd" }, tolerations = [{ key = "gpu", operator = "Exists", effect = "NoSchedule" }] }

[[pools]]
kernelspec = "python3"
profile = "small"
size = 2
"#;

    #[test]
    fn a_profiles_file_becomes_profiles_with_their_backend_settings() {
        let set = parse(FILE, &EnvPolicy::default()).expect("valid");
        let small = set.get("small").expect("small");
        assert_eq!(small.resources.memory, Some(512 << 20));
        assert_eq!(small.placement.limits.memory_bytes, Some(512 << 20));
        assert_eq!(small.placement.limits.cpus, Some(1));
        let large = set.get("large").expect("large");
        assert_eq!(large.placement.limits.memory_bytes, Some(2 << 30));
        assert_eq!(large.placement.limits.cpu_seconds, Some(60));
        assert_eq!(large.placement.hosts, ["127.0.0.2", "127.0.0.3"]);
        assert_eq!(large.placement.kubernetes.node_selector["disktype"], "ssd");
        assert_eq!(
            large.placement.kubernetes.tolerations[0].effect.as_deref(),
            Some("NoSchedule")
        );
        assert_eq!(
            large.placement.spark.arguments(),
            [
                "--queue",
                "big",
                "--driver-memory",
                "4g",
                "--executor-memory",
                "8g",
                "--num-executors",
                "4",
                "--executor-cores",
                "2"
            ]
        );
        assert_eq!(set.pools.len(), 1);
        assert_eq!(set.pools[0].size, 2);
    }

    #[test]
    fn bad_profiles_files_are_refused_with_what_is_wrong() {
        let policy = EnvPolicy::default();
        let refused = |text: &str| format!("{:#}", parse(text, &policy).expect_err(text));
        assert!(refused("[[profiles]]\nname = \"a\"\nbogus = 1").contains("bogus"));
        assert!(
            refused("[[profiles]]\nname = \"a\"\n[[profiles]]\nname = \"a\"").contains("twice")
        );
        assert!(refused("[[profiles]]\nname = \"a\"\nenv = { PATH = \"/x\" }").contains("PATH"));
        assert!(
            refused("[[profiles]]\nname = \"a\"\nresources = { memory = \"lots\" }")
                .contains("lots")
        );
        assert!(
            refused("[[profiles]]\nname = \"a\"\nyarn = { driver_memory = \"4 gigs\" }")
                .contains("Spark size")
        );
        assert!(
            refused("[[pools]]\nkernelspec = \"p\"\nprofile = \"nope\"\nsize = 1").contains("nope")
        );
        assert!(refused("[[pools]]\nkernelspec = \"p\"\nsize = 1000").contains("at most"));
        assert!(
            refused("[[profiles]]\nname = \"a\"\nkubernetes = { tolerations = [{ key = \"g\", effect = \"Often\" }] }")
                .contains("kubernetes.tolerations[0].effect")
        );
        assert!(
            refused(
                "[[profiles]]\nname = \"a\"\nkubernetes = { node_selector = { \"a b\" = \"c\" } }"
            )
            .contains("kubernetes.node_selector key")
        );
        assert!(
            refused("[[profiles]]\nname = \"a\"\nkubernetes = { pod_template = \"/nonexistent/pod.j2\" }")
                .contains("not a file")
        );
        assert!(
            refused("[[profiles]]\nname = \"a\"\nkernelspecs = [\"r\"]\n[[pools]]\nkernelspec = \"p\"\nprofile = \"a\"\nsize = 1")
                .contains("does not apply")
        );
    }

    #[test]
    fn sizes_take_binary_units() {
        let size = |t: &str| bytes(&Size::Text(t.into())).expect(t);
        assert_eq!(size("512M"), 512 << 20);
        assert_eq!(size("2g"), 2 << 30);
        assert_eq!(size("1GiB"), 1 << 30);
        assert_eq!(size("1T"), 1 << 40);
        assert_eq!(size("4096"), 4096);
        assert!(bytes(&Size::Text("-1M".into())).is_err());
    }
}
