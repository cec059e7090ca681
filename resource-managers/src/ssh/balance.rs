//! Host choice: `round-robin` and `least-connection`, with failed hosts tried last for a while.
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};
use tokio::time::Instant;

use crate::Error;

/// EG's `load_balancing_algorithm` (`EG_LOAD_BALANCING_ALGORITHM`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LoadBalancing {
    /// One counter for all kernelspecs; the next host in turn.
    #[default]
    RoundRobin,
    /// The host with the fewest kernels of this backend (ties: list order).
    LeastConnection,
}

impl FromStr for LoadBalancing {
    type Err = Error;

    fn from_str(s: &str) -> Result<LoadBalancing, Error> {
        match s.trim().to_ascii_lowercase().as_str() {
            "round-robin" | "" => Ok(LoadBalancing::RoundRobin),
            "least-connection" => Ok(LoadBalancing::LeastConnection),
            other => Err(Error::Config(format!(
                "invalid load balancing algorithm '{other}': use 'round-robin' or 'least-connection'"
            ))),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    turn: usize,
    active: HashMap<String, usize>,
    failed: HashMap<String, Instant>,
}

/// The shared host-choice state of one backend.
#[derive(Debug, Clone, Default)]
pub(crate) struct Balancer {
    state: Arc<Mutex<State>>,
}

impl Balancer {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    /// The hosts in the order to try them: the algorithm's pick first, hosts that failed within
    /// `retry_after` last. Advances the round-robin counter once.
    pub(crate) fn order(
        &self,
        hosts: &[String],
        algorithm: LoadBalancing,
        retry_after: Duration,
    ) -> Vec<String> {
        let mut state = self.lock();
        if hosts.is_empty() {
            return Vec::new();
        }
        let mut ordered: Vec<String> = match algorithm {
            LoadBalancing::RoundRobin => {
                let start = state.turn % hosts.len();
                state.turn = state.turn.wrapping_add(1);
                hosts[start..]
                    .iter()
                    .chain(&hosts[..start])
                    .cloned()
                    .collect()
            }
            LoadBalancing::LeastConnection => {
                let mut sorted: Vec<(usize, usize, &String)> = hosts
                    .iter()
                    .enumerate()
                    .map(|(i, h)| (state.active.get(h).copied().unwrap_or(0), i, h))
                    .collect();
                sorted.sort();
                sorted.into_iter().map(|(_, _, h)| h.clone()).collect()
            }
        };
        let now = Instant::now();
        state
            .failed
            .retain(|_, at| now.saturating_duration_since(*at) < retry_after);
        // Stable: healthy hosts keep their order, recently failed ones go last.
        ordered.sort_by_key(|h| state.failed.contains_key(h));
        ordered
    }

    /// Remembers that `host` could not be reached.
    pub(crate) fn mark_failed(&self, host: &str) {
        self.lock().failed.insert(host.to_owned(), Instant::now());
    }

    /// Counts a kernel on `host` until the returned slot is released or dropped.
    pub(crate) fn acquire(&self, host: &str) -> HostSlot {
        let mut state = self.lock();
        state.failed.remove(host);
        *state.active.entry(host.to_owned()).or_insert(0) += 1;
        HostSlot {
            balancer: self.clone(),
            host: host.to_owned(),
        }
    }

    /// Kernels currently counted on `host`.
    pub(crate) fn active(&self, host: &str) -> usize {
        self.lock().active.get(host).copied().unwrap_or(0)
    }
}

/// One kernel counted on a host.
#[derive(Debug)]
pub(crate) struct HostSlot {
    balancer: Balancer,
    host: String,
}

impl Drop for HostSlot {
    fn drop(&mut self) {
        let mut state = self.balancer.lock();
        if let Some(count) = state.active.get_mut(&self.host) {
            *count = count.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(list: &[&str]) -> Vec<String> {
        list.iter().map(|h| (*h).to_owned()).collect()
    }

    #[test]
    fn parse() {
        assert_eq!(
            "round-robin".parse::<LoadBalancing>().ok(),
            Some(LoadBalancing::RoundRobin)
        );
        assert_eq!(
            "Least-Connection".parse::<LoadBalancing>().ok(),
            Some(LoadBalancing::LeastConnection)
        );
        assert!("random".parse::<LoadBalancing>().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn orders() {
        let b = Balancer::default();
        let list = hosts(&["a", "b", "c"]);
        let rr = |b: &Balancer| b.order(&list, LoadBalancing::RoundRobin, Duration::from_secs(30));
        assert_eq!(rr(&b), hosts(&["a", "b", "c"]));
        assert_eq!(rr(&b), hosts(&["b", "c", "a"]));
        b.mark_failed("c");
        assert_eq!(rr(&b), hosts(&["a", "b", "c"]));
        assert_eq!(rr(&b), hosts(&["a", "b", "c"]), "c failed: tried last");
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(rr(&b), hosts(&["b", "c", "a"]), "c retried later");

        let lc = |b: &Balancer| {
            b.order(
                &list,
                LoadBalancing::LeastConnection,
                Duration::from_secs(30),
            )
        };
        let a = b.acquire("a");
        let _b1 = b.acquire("b");
        let _b2 = b.acquire("b");
        assert_eq!(lc(&b), hosts(&["c", "a", "b"]));
        drop(a);
        assert_eq!(b.active("a"), 0);
        assert_eq!(lc(&b), hosts(&["a", "c", "b"]));
        assert!(
            b.order(&[], LoadBalancing::RoundRobin, Duration::ZERO)
                .is_empty()
        );
    }
}
