//! Port ranges and port allocation.
//!
//! A [`PortRange`] is parsed from EG's `lo..hi` notation (`EG_PORT_RANGE`, or a kernelspec's
//! `config.port_range`) and validated with EG's rules and messages (reference §6.4). `0..0` means
//! "no restriction": the operating system picks the ports.
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::sync::Arc;

use parking_lot::Mutex;
use rand::Rng;

use crate::Error;

/// The smallest size (`hi - lo`) a restricted range may have (EG's `EG_MIN_PORT_RANGE_SIZE`).
pub const MIN_PORT_RANGE_SIZE: i64 = 1000;

/// How many random candidates are tried per port before giving up (EG's `EG_MAX_PORT_RANGE_RETRIES`).
pub const MAX_PORT_RANGE_RETRIES: usize = 5;

/// The lowest port a restricted range may include.
const LOWEST_PORT: i64 = 1024;
/// The highest port number.
const HIGHEST_PORT: i64 = 65535;

/// An inclusive port range; `0..0` means "any port the OS picks".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// Lower bound.
    pub lo: u16,
    /// Upper bound.
    pub hi: u16,
}

impl Default for PortRange {
    /// `0..0`: no restriction.
    fn default() -> PortRange {
        PortRange::ANY
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}..{}", self.lo, self.hi)
    }
}

impl PortRange {
    /// `0..0`: the operating system chooses every port.
    pub const ANY: PortRange = PortRange { lo: 0, hi: 0 };

    /// Whether this is the unrestricted `0..0`-style range (size 0).
    pub fn is_unrestricted(&self) -> bool {
        self.lo == self.hi
    }

    /// Parses and validates `lo..hi` with EG's rules and messages (min size 1000, 1024..65535).
    pub fn parse(s: &str) -> Result<PortRange, Error> {
        let failed = |why: String| {
            Error::PortRange(format!(
                "Port range validation failed for range: '{s}'.  Error was: {why}"
            ))
        };
        let mut parts = s.split("..");
        let (Some(lo_text), Some(hi_text)) = (parts.next(), parts.next()) else {
            return Err(failed("list index out of range".to_owned()));
        };
        let lo = parse_int(lo_text).ok_or_else(|| failed(invalid_literal(lo_text)))?;
        let hi = parse_int(hi_text).ok_or_else(|| failed(invalid_literal(hi_text)))?;
        let size = hi - lo;
        if size != 0 {
            if size < MIN_PORT_RANGE_SIZE {
                return Err(Error::PortRange(format!(
                    "Port range validation failed for range: '{s}'.  Range size must be at least \
                     {MIN_PORT_RANGE_SIZE} as specified by env EG_MIN_PORT_RANGE_SIZE"
                )));
            }
            if lo < LOWEST_PORT || hi > HIGHEST_PORT {
                return Err(Error::PortRange(format!(
                    "Invalid port range '{s}' specified. Range for valid port numbers is \
                     ({LOWEST_PORT}, {HIGHEST_PORT})."
                )));
            }
        }
        // A size-0 range is unrestricted whatever its bounds.
        if size == 0 {
            return Ok(PortRange::ANY);
        }
        let to_port = |v: i64| u16::try_from(v).unwrap_or(0);
        Ok(PortRange {
            lo: to_port(lo),
            hi: to_port(hi),
        })
    }

    /// `lo..hi`.
    pub fn to_template(&self) -> String {
        self.to_string()
    }

    /// Allocates `n` distinct free TCP ports on `host`, inside the range when it is not `0..0`.
    ///
    /// Each port is found by binding a candidate: port 0 (the OS picks) for an unrestricted range,
    /// else a random port in `lo..=hi`, with up to [`MAX_PORT_RANGE_RETRIES`] attempts per port. The
    /// sockets are held until all `n` ports are found, so the ports are distinct, then released for
    /// the kernel to bind. An empty `host` binds every interface, as EG does.
    pub fn allocate(&self, host: &str, n: usize) -> Result<Vec<u16>, Error> {
        let ip: IpAddr = if host.is_empty() || host == "*" {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        } else {
            host.parse().map_err(|_| {
                Error::Io(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("cannot allocate ports on '{host}': not an IP address"),
                ))
            })?
        };
        let mut held = Vec::with_capacity(n);
        let mut ports = BTreeSet::new();
        for _ in 0..n {
            let listener = if self.is_unrestricted() {
                TcpListener::bind(SocketAddr::new(ip, 0))?
            } else {
                self.bind_random(ip, &ports)?
            };
            let port = listener.local_addr()?.port();
            ports.insert(port);
            held.push((port, listener));
        }
        Ok(held.into_iter().map(|(port, _listener)| port).collect())
    }

    /// Binds one listening socket on `ip` at a port inside the range (the OS picks for `0..0`)
    /// and keeps it, so nothing can take the port in between (a launcher's communication port).
    pub fn bind_listener(&self, ip: IpAddr) -> Result<TcpListener, Error> {
        if self.is_unrestricted() {
            return Ok(TcpListener::bind(SocketAddr::new(ip, 0))?);
        }
        self.bind_random(ip, &BTreeSet::new())
    }

    /// Binds a random not-yet-chosen port inside the range, retrying a few times.
    fn bind_random(&self, ip: IpAddr, taken: &BTreeSet<u16>) -> Result<TcpListener, Error> {
        let (lo, hi) = (self.lo.min(self.hi), self.lo.max(self.hi));
        let mut rng = rand::rng();
        for _ in 0..MAX_PORT_RANGE_RETRIES {
            let candidate: u16 = rng.random_range(lo..=hi);
            if candidate == 0 || taken.contains(&candidate) {
                continue;
            }
            if let Ok(listener) = TcpListener::bind(SocketAddr::new(ip, candidate)) {
                return Ok(listener);
            }
        }
        Err(Error::NoFreePort(format!(
            "Failed to locate port within range {self} after {MAX_PORT_RANGE_RETRIES} retries!"
        )))
    }
}

/// Hands out kernel ports and remembers them until the kernel is done with them.
///
/// [`PortRange::allocate`] alone has two races that show up when many kernels start at once: a
/// port found free is released before the kernel binds it, so a second launch can be handed the
/// same port; and for an unrestricted range the OS picks from its ephemeral range, which is also
/// where the gateway's own outgoing connections (to other kernels) take their source ports.
/// The allocator closes both: every port it hands out stays reserved until its [`PortLease`] is
/// dropped, and an unrestricted range draws from ports below (or above) the ephemeral range.
#[derive(Debug)]
pub struct PortAllocator {
    shared: Arc<Mutex<HashMap<u16, usize>>>,
    /// Where unrestricted (`0..0`) ports come from; `None` = let the OS pick.
    unrestricted: Option<(u16, u16)>,
}

/// Ports reserved for one kernel; released when dropped.
#[derive(Debug)]
pub struct PortLease {
    ports: Vec<u16>,
    shared: Arc<Mutex<HashMap<u16, usize>>>,
}

impl PortLease {
    /// The reserved ports, in allocation order.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }
}

impl Drop for PortLease {
    fn drop(&mut self) {
        let mut reserved = self.shared.lock();
        for port in &self.ports {
            if let Some(count) = reserved.get_mut(port) {
                *count -= 1;
                if *count == 0 {
                    reserved.remove(port);
                }
            }
        }
    }
}

/// The ephemeral port range Linux uses for outgoing connections, from
/// `/proc/sys/net/ipv4/ip_local_port_range` (32768..60999 when unreadable).
pub fn ephemeral_port_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut it = text.split_whitespace().map(|t| t.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999))
}

impl PortAllocator {
    /// An allocator that keeps unrestricted ports out of `ephemeral` (lo, hi): it uses
    /// 10000..lo-1 when that holds at least 2000 ports, else hi+1..65535 when that does, else
    /// lets the OS pick.
    pub fn new(ephemeral: (u16, u16)) -> PortAllocator {
        const FLOOR: u16 = 10_000;
        const MIN_SIZE: u16 = 2_000;
        let (lo, hi) = (ephemeral.0.min(ephemeral.1), ephemeral.0.max(ephemeral.1));
        let unrestricted = if lo > FLOOR && lo - FLOOR >= MIN_SIZE {
            Some((FLOOR, lo - 1))
        } else if hi < u16::MAX && u16::MAX - hi >= MIN_SIZE {
            Some((hi + 1, u16::MAX))
        } else {
            None
        };
        PortAllocator {
            shared: Arc::new(Mutex::new(HashMap::new())),
            unrestricted,
        }
    }

    /// An allocator for this host's ephemeral range.
    pub fn for_this_host() -> PortAllocator {
        PortAllocator::new(ephemeral_port_range())
    }

    /// Reserves `n` distinct free ports on `host` inside `range` (or, for `0..0`, outside the
    /// ephemeral range), none of them reserved by another lease.
    pub fn allocate(&self, range: PortRange, host: &str, n: usize) -> Result<PortLease, Error> {
        let ip = parse_host(host)?;
        let effective = match (range.is_unrestricted(), self.unrestricted) {
            (false, _) => Some((range.lo.min(range.hi), range.lo.max(range.hi))),
            (true, window) => window,
        };
        let mut held = Vec::with_capacity(n);
        let mut reserved = self.shared.lock();
        let mut chosen = BTreeSet::new();
        for _ in 0..n {
            let listener = match effective {
                None => loop {
                    let listener = TcpListener::bind(SocketAddr::new(ip, 0))?;
                    let port = listener.local_addr()?.port();
                    if !reserved.contains_key(&port) && !chosen.contains(&port) {
                        break listener;
                    }
                },
                Some((lo, hi)) => {
                    // Reserved ports count as taken; a restricted range keeps EG's retry budget,
                    // the wide unrestricted window gets a generous one.
                    let attempts = if range.is_unrestricted() {
                        200
                    } else {
                        MAX_PORT_RANGE_RETRIES
                    };
                    let mut rng = rand::rng();
                    let mut found = None;
                    for _ in 0..attempts {
                        let candidate: u16 = rng.random_range(lo..=hi);
                        if candidate == 0
                            || chosen.contains(&candidate)
                            || reserved.contains_key(&candidate)
                        {
                            continue;
                        }
                        if let Ok(listener) = TcpListener::bind(SocketAddr::new(ip, candidate)) {
                            found = Some(listener);
                            break;
                        }
                    }
                    found.ok_or_else(|| {
                        Error::NoFreePort(format!(
                            "Failed to locate port within range {range} after {MAX_PORT_RANGE_RETRIES} retries!"
                        ))
                    })?
                }
            };
            let port = listener.local_addr()?.port();
            chosen.insert(port);
            held.push(listener);
        }
        let ports: Vec<u16> = held
            .iter()
            .filter_map(|l| l.local_addr().ok().map(|a| a.port()))
            .collect();
        for port in &ports {
            *reserved.entry(*port).or_insert(0) += 1;
        }
        Ok(PortLease {
            ports,
            shared: Arc::clone(&self.shared),
        })
    }

    /// Reserves ports a kernel already uses (a restart on the same ports).
    pub fn reserve(&self, ports: &[u16]) -> PortLease {
        let mut reserved = self.shared.lock();
        for port in ports {
            *reserved.entry(*port).or_insert(0) += 1;
        }
        PortLease {
            ports: ports.to_vec(),
            shared: Arc::clone(&self.shared),
        }
    }

    /// How many ports are reserved right now.
    pub fn reserved_count(&self) -> usize {
        self.shared.lock().len()
    }
}

fn parse_host(host: &str) -> Result<IpAddr, Error> {
    if host.is_empty() || host == "*" {
        return Ok(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    }
    host.parse().map_err(|_| {
        Error::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("cannot allocate ports on '{host}': not an IP address"),
        ))
    })
}

/// Parses an integer the way Python's `int()` accepts common input (surrounding blanks, a sign).
fn parse_int(text: &str) -> Option<i64> {
    text.trim().parse::<i64>().ok()
}

/// Python's `int()` error text, so EG clients see familiar messages.
fn invalid_literal(text: &str) -> String {
    format!("invalid literal for int() with base 10: '{text}'")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Ok(range)` or the error text.
    #[track_caller]
    fn check(input: &str, expected: Result<(u16, u16), &str>) {
        let got = PortRange::parse(input)
            .map(|r| (r.lo, r.hi))
            .map_err(|e| e.to_string());
        assert_eq!(got, expected.map_err(str::to_owned), "input {input:?}");
    }

    #[test]
    fn parse_follows_eg_rules() {
        check("0..0", Ok((0, 0)));
        check("30000..31000", Ok((30000, 31000)));
        check("1024..65535", Ok((1024, 65535)));
        check(" 40000 .. 45000 ", Ok((40000, 45000)));
        check("5..5", Ok((0, 0)));
        check(
            "10000..10999",
            Err(
                "Port range validation failed for range: '10000..10999'.  Range size must be at \
                 least 1000 as specified by env EG_MIN_PORT_RANGE_SIZE",
            ),
        );
        check(
            "31000..30000",
            Err(
                "Port range validation failed for range: '31000..30000'.  Range size must be at \
                 least 1000 as specified by env EG_MIN_PORT_RANGE_SIZE",
            ),
        );
        check(
            "100..11099",
            Err(
                "Invalid port range '100..11099' specified. Range for valid port numbers is \
                 (1024, 65535).",
            ),
        );
        check(
            "10000..65537",
            Err(
                "Invalid port range '10000..65537' specified. Range for valid port numbers is \
                 (1024, 65535).",
            ),
        );
        check(
            "abc..2000",
            Err(
                "Port range validation failed for range: 'abc..2000'.  Error was: invalid \
                 literal for int() with base 10: 'abc'",
            ),
        );
        check(
            "3000",
            Err(
                "Port range validation failed for range: '3000'.  Error was: list index out of \
                 range",
            ),
        );
    }

    #[test]
    fn template_form() {
        assert_eq!(PortRange::ANY.to_template(), "0..0");
        assert_eq!(
            PortRange {
                lo: 30000,
                hi: 31000
            }
            .to_template(),
            "30000..31000"
        );
    }

    #[test]
    fn allocate_unrestricted_gives_distinct_ports() -> Result<(), Error> {
        let ports = PortRange::ANY.allocate("127.0.0.1", 5)?;
        assert_eq!(ports.len(), 5);
        let distinct: BTreeSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), 5);
        assert!(ports.iter().all(|p| *p != 0));
        Ok(())
    }

    #[test]
    fn allocate_inside_range() -> Result<(), Error> {
        let range = PortRange::parse("30000..31000")?;
        let ports = range.allocate("127.0.0.1", 5)?;
        assert_eq!(ports.iter().collect::<BTreeSet<_>>().len(), 5);
        assert!(
            ports.iter().all(|p| (30000..=31000).contains(p)),
            "{ports:?}"
        );
        Ok(())
    }

    #[test]
    fn allocate_reports_exhaustion() -> Result<(), Error> {
        // A one-port range whose only port is taken: every candidate fails.
        // (`allocate` would treat lo == hi as unrestricted, so call the range search directly.)
        let blocker = TcpListener::bind("127.0.0.1:0")?;
        let port = blocker.local_addr()?.port();
        let err = PortRange { lo: port, hi: port }
            .bind_random(IpAddr::V4(Ipv4Addr::LOCALHOST), &BTreeSet::new())
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some(
                format!("Failed to locate port within range {port}..{port} after 5 retries!")
                    .as_str()
            )
        );
        Ok(())
    }

    #[test]
    fn allocate_rejects_non_ip_host() {
        assert!(PortRange::ANY.allocate("not an ip", 1).is_err());
    }

    #[test]
    fn allocator_never_hands_out_a_reserved_port() -> Result<(), Error> {
        let allocator = PortAllocator::for_this_host();
        let mut leases = Vec::new();
        let mut seen = BTreeSet::new();
        for _ in 0..200 {
            let lease = allocator.allocate(PortRange::ANY, "127.0.0.1", 5)?;
            for port in lease.ports() {
                assert!(
                    seen.insert(*port),
                    "port {port} handed out twice while reserved"
                );
            }
            leases.push(lease);
        }
        assert_eq!(allocator.reserved_count(), 1000);
        drop(leases);
        assert_eq!(allocator.reserved_count(), 0);
        Ok(())
    }

    #[test]
    fn allocator_keeps_unrestricted_ports_out_of_the_ephemeral_range() -> Result<(), Error> {
        let allocator = PortAllocator::new((32768, 60999));
        let lease = allocator.allocate(PortRange::ANY, "127.0.0.1", 5)?;
        for port in lease.ports() {
            assert!((10_000..32768).contains(port), "port {port}");
        }
        let restricted = PortRange::parse("30000..31000")?;
        let lease = allocator.allocate(restricted, "127.0.0.1", 5)?;
        assert!(lease.ports().iter().all(|p| (30000..=31000).contains(p)));
        let again = allocator.reserve(lease.ports());
        drop(lease);
        assert_eq!(
            allocator.reserved_count(),
            5 + 5,
            "restart reservation keeps the ports"
        );
        drop(again);
        Ok(())
    }
}
