//! Which host a launch goes to, as whom, and at which address. The order itself (round-robin,
//! least-connection, failed hosts last) is [`super::balance`]'s.

use std::net::{IpAddr, SocketAddr};

use super::balance::Balancer;
use super::config::SshOptions;
use super::session::SessionError;
use crate::{Error, LaunchRequest};

/// The hosts of a launch in the order they will be tried: `KERNEL_REMOTE_HOST` alone (when a
/// profile's host group is set, only if it is one of the group), else the profile's host group,
/// the kernelspec's hosts or `configured` (`localhost` when all are empty), ordered by the
/// load-balancing algorithm. Advances the round-robin counter.
pub(super) fn candidates(
    request: &LaunchRequest,
    configured: &[String],
    balancer: &Balancer,
    options: &SshOptions,
) -> Vec<String> {
    let group = &request.placement.hosts;
    if let Some(pinned) = request
        .env
        .get("KERNEL_REMOTE_HOST")
        .map(|h| h.trim())
        .filter(|h| !h.is_empty())
        .filter(|h| group.is_empty() || group.iter().any(|g| g == h))
    {
        return vec![pinned.to_owned()];
    }
    let hosts = if !group.is_empty() {
        group
    } else if request.spec.config.remote_hosts.is_empty() {
        configured
    } else {
        &request.spec.config.remote_hosts
    };
    if hosts.is_empty() {
        return vec!["localhost".to_owned()];
    }
    balancer.order(hosts, options.load_balancing, options.host_retry_after)
}

/// The remote user of a launch: `KERNEL_USERNAME` with impersonation, else the configured remote
/// user, else `own_user` (the gateway's). A name SSH cannot carry is a configuration error.
pub(super) fn remote_user(
    request: &LaunchRequest,
    options: &SshOptions,
    own_user: &str,
) -> Result<String, Error> {
    let user = request
        .env
        .get("KERNEL_USERNAME")
        .filter(|u| options.impersonation && !u.trim().is_empty())
        .or(options.remote_user.as_ref())
        .map_or(own_user, String::as_str);
    let valid = !user.is_empty()
        && user.len() <= 256
        && !user
            .chars()
            .any(|c| c.is_control() || c == '@' || c.is_whitespace());
    if valid {
        Ok(user.to_owned())
    } else {
        Err(Error::Config(format!(
            "{user:?} is not a usable remote user name"
        )))
    }
}

/// Resolves a host name to one address, IPv4 preferred (EG uses `gethostbyname`). A name that
/// does not resolve makes the host unreachable for this launch.
pub(super) async fn resolve(host: &str) -> Result<IpAddr, SessionError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ip);
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, 0))
        .await
        .map_err(|e| {
            SessionError::Unreachable(format!("cannot resolve remote host '{host}': {e}"))
        })?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .map(SocketAddr::ip)
        .ok_or_else(|| SessionError::Unreachable(format!("remote host '{host}' has no address")))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use kernel_launcher::KernelSpec;

    use super::*;
    use crate::ssh::balance::LoadBalancing;

    fn request(spec_hosts: &[&str], env: &[(&str, &str)], group: &[&str]) -> LaunchRequest {
        let json = serde_json::json!({
            "argv": ["python", "launch_ipykernel.py", "--kernel-id", "{kernel_id}"],
            "display_name": "P",
            "language": "python",
            "metadata": {"process_proxy": {
                "class_name": "ssh",
                "config": {"remote_hosts": spec_hosts},
            }},
        });
        let spec = KernelSpec::from_json("p", std::path::Path::new("/specs/p"), &json);
        LaunchRequest {
            kernel_id: "k".to_owned(),
            spec: spec.expect("kernelspec"),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
            cwd: None,
            port_range: kernel_launcher::PortRange::ANY,
            timeout: Duration::from_secs(1),
            previous: None,
            username: "u".to_owned(),
            run_as: None,
            placement: crate::Placement {
                hosts: group.iter().map(|h| (*h).to_owned()).collect(),
                ..Default::default()
            },
        }
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|h| (*h).to_owned()).collect()
    }

    #[test]
    fn hosts_come_from_the_pin_the_group_the_kernelspec_or_the_configuration() {
        let balancer = Balancer::default();
        let options = SshOptions::default();
        let configured = names(&["c1", "c2"]);
        let pick = |r: &LaunchRequest| candidates(r, &configured, &balancer, &options);

        assert_eq!(pick(&request(&[], &[], &[])), names(&["c1", "c2"]));
        // Round robin: the counter is the backend's, shared by every kernelspec.
        assert_eq!(
            pick(&request(&["s1", "s2"], &[], &[])),
            names(&["s2", "s1"])
        );
        assert_eq!(
            pick(&request(&["s1"], &[], &["g1", "g2"])),
            names(&["g1", "g2"])
        );
        let pinned = request(&["s1"], &[("KERNEL_REMOTE_HOST", " p ")], &[]);
        assert_eq!(pick(&pinned), names(&["p"]));
        // A pin outside the profile's group is not followed; one inside it is.
        let outside = request(&[], &[("KERNEL_REMOTE_HOST", "p")], &["g1"]);
        assert_eq!(pick(&outside), names(&["g1"]));
        let inside = request(&[], &[("KERNEL_REMOTE_HOST", "g2")], &["g1", "g2"]);
        assert_eq!(pick(&inside), names(&["g2"]));
        let blank = request(&["s1"], &[("KERNEL_REMOTE_HOST", "  ")], &[]);
        assert_eq!(pick(&blank), names(&["s1"]));
        // Nothing configured anywhere: this machine.
        assert_eq!(
            candidates(&request(&[], &[], &[]), &[], &balancer, &options),
            names(&["localhost"])
        );

        let least = SshOptions {
            load_balancing: LoadBalancing::LeastConnection,
            ..SshOptions::default()
        };
        let _busy = balancer.acquire("c1");
        assert_eq!(
            candidates(&request(&[], &[], &[]), &configured, &balancer, &least),
            names(&["c2", "c1"])
        );
    }

    #[test]
    fn the_remote_user_follows_impersonation_and_must_be_a_plain_name() {
        let plain = SshOptions::default();
        let fixed = SshOptions {
            remote_user: Some("svc".to_owned()),
            ..SshOptions::default()
        };
        let impersonating = SshOptions {
            impersonation: true,
            ..fixed.clone()
        };
        let alice = request(&[], &[("KERNEL_USERNAME", "alice")], &[]);
        assert_eq!(
            remote_user(&alice, &plain, "gw").ok(),
            Some("gw".to_owned())
        );
        assert_eq!(
            remote_user(&alice, &fixed, "gw").ok(),
            Some("svc".to_owned())
        );
        assert_eq!(
            remote_user(&alice, &impersonating, "gw").ok(),
            Some("alice".to_owned())
        );
        let nobody = request(&[], &[("KERNEL_USERNAME", " ")], &[]);
        assert_eq!(
            remote_user(&nobody, &impersonating, "gw").ok(),
            Some("svc".to_owned())
        );
        let long = "u".repeat(257);
        for bad in ["a b", "eve@host", "x\ny", long.as_str()] {
            let hostile = request(&[], &[("KERNEL_USERNAME", bad)], &[]);
            assert!(
                matches!(
                    remote_user(&hostile, &impersonating, "gw"),
                    Err(Error::Config(_))
                ),
                "{bad:?}"
            );
        }
        assert!(remote_user(&alice, &plain, "").is_err());
    }

    #[tokio::test]
    async fn addresses_resolve_ipv4_first() {
        assert_eq!(
            resolve("10.1.2.3").await.ok(),
            Some(IpAddr::from([10, 1, 2, 3]))
        );
        assert_eq!(resolve("::1").await.ok(), "::1".parse().ok());
        let local = resolve("localhost").await;
        assert!(matches!(local, Ok(ip) if ip.is_loopback()), "{local:?}");
    }
}
