//! Exclusions (`DIR,PROTO,CIDR[,PORTS]`), durations and process names: parsing, validation and
//! matching. Pure: no I/O.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use enforcer_common::COMM_LEN;

/// Which way a flow goes, seen from the isolated host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Connections and datagrams towards this host; ports name the local port.
    In,
    /// Connections and datagrams this host starts; ports name the remote port.
    Out,
    Both,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    /// ICMP for IPv4, `ICMPv6` for IPv6.
    Icmp,
    Any,
}

/// An inclusive port range; a single port has `first == last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub const ALL: PortRange = PortRange { first: 0, last: u16::MAX };

    pub fn contains(self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

/// An address block: the network address (host bits zero) and its prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Network {
    pub address: IpAddr,
    pub prefix_len: u8,
}

impl Network {
    pub fn contains(self, address: IpAddr) -> bool {
        match (self.address, address) {
            (IpAddr::V4(net), IpAddr::V4(addr)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix_len)).unwrap_or(0);
                u32::from(net) & mask == u32::from(addr) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(addr)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix_len)).unwrap_or(0);
                u128::from(net) & mask == u128::from(addr) & mask
            }
            _ => false,
        }
    }

    /// Whether every address of `other` is in `self`.
    pub fn covers(self, other: Network) -> bool {
        self.prefix_len <= other.prefix_len && self.contains(other.address)
    }

    /// A single host: /32 or /128.
    pub fn host(address: IpAddr) -> Network {
        let prefix_len = if address.is_ipv4() { 32 } else { 128 };
        Network { address, prefix_len }
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix_len)
    }
}

/// One exclusion: traffic it matches keeps flowing while the host is isolated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Exclusion {
    pub direction: Direction,
    pub protocol: Protocol,
    pub network: Network,
    /// `None`: every port.
    pub ports: Option<PortRange>,
}

/// Why an exclusion SPEC, a duration or a process name was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidInput {
    #[error("invalid exclusion '{spec}': {problem} (expected DIR,PROTO,CIDR[,PORTS], e.g. out,tcp,198.51.100.7/32,443)")]
    Exclusion { spec: String, problem: String },
    #[error("invalid duration '{text}': {problem} (expected a whole number and a unit s, m, h or d, e.g. 90s, 15m, 4h, 7d)")]
    Duration { text: String, problem: String },
    #[error("invalid process name '{name}': {problem}")]
    ProcessName { name: String, problem: String },
}

impl FromStr for Exclusion {
    type Err = InvalidInput;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let fail = |problem: String| InvalidInput::Exclusion { spec: spec.to_owned(), problem };
        let fields: Vec<&str> = spec.split(',').map(str::trim).collect();
        if !(3..=4).contains(&fields.len()) {
            return Err(fail(format!("it has {} comma-separated fields, expected 3 or 4", fields.len())));
        }
        let direction = match fields[0] {
            "in" => Direction::In,
            "out" => Direction::Out,
            "both" => Direction::Both,
            other => return Err(fail(format!("direction '{other}' is not one of in, out, both"))),
        };
        let protocol = match fields[1] {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "icmp" => Protocol::Icmp,
            "any" => Protocol::Any,
            other => return Err(fail(format!("protocol '{other}' is not one of tcp, udp, icmp, any"))),
        };
        let network = parse_network(fields[2]).map_err(fail)?;
        let ports = match fields.get(3) {
            None => None,
            Some(text) => Some(parse_ports(text).map_err(fail)?),
        };
        if ports.is_some() && protocol == Protocol::Icmp {
            return Err(fail("ICMP has no ports; drop the PORTS field or use tcp, udp or any".into()));
        }
        Ok(Exclusion { direction, protocol, network, ports })
    }
}

fn parse_network(text: &str) -> Result<Network, String> {
    let Some((address, prefix)) = text.split_once('/') else {
        return Err(format!("'{text}' is not a CIDR: add a prefix length, e.g. {text}/32 or {text}/128"));
    };
    let address: IpAddr =
        address.parse().map_err(|_| format!("'{address}' is not an IPv4 or IPv6 address"))?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    let prefix_len: u8 = prefix
        .parse()
        .ok()
        .filter(|len| *len <= max)
        .ok_or_else(|| format!("prefix length '{prefix}' is not a number from 0 to {max}"))?;
    let network = Network { address, prefix_len };
    let canonical = Network { address: mask_address(address, prefix_len), prefix_len };
    if canonical != network {
        return Err(format!("'{text}' has host bits set; the network is {canonical}"));
    }
    Ok(network)
}

fn mask_address(address: IpAddr, prefix_len: u8) -> IpAddr {
    match address {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix_len)).unwrap_or(0);
            IpAddr::V4((u32::from(v4) & mask).into())
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix_len)).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & mask).into())
        }
    }
}

fn parse_ports(text: &str) -> Result<PortRange, String> {
    let port = |part: &str| -> Result<u16, String> {
        part.parse::<u16>()
            .ok()
            .filter(|port| *port != 0)
            .ok_or_else(|| format!("port '{part}' is not a number from 1 to 65535"))
    };
    let range = if let Some((first, last)) = text.split_once('-') {
        PortRange { first: port(first)?, last: port(last)? }
    } else {
        let single = port(text)?;
        PortRange { first: single, last: single }
    };
    if range.first > range.last {
        return Err(format!("port range '{text}' ends before it starts"));
    }
    Ok(range)
}

impl fmt::Display for Exclusion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let direction = match self.direction {
            Direction::In => "in",
            Direction::Out => "out",
            Direction::Both => "both",
        };
        let protocol = match self.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
            Protocol::Any => "any",
        };
        write!(f, "{direction},{protocol},{}", self.network)?;
        match self.ports {
            Some(PortRange { first, last }) if first == last => write!(f, ",{first}"),
            Some(PortRange { first, last }) => write!(f, ",{first}-{last}"),
            None => Ok(()),
        }
    }
}

impl Exclusion {
    /// Whether this exclusion spares an existing connection (used when severing): an `out`
    /// exclusion by the remote port, an `in` exclusion by the local port.
    pub fn spares_connection(&self, tcp: bool, remote: IpAddr, local_port: u16, remote_port: u16) -> bool {
        let protocol_ok = match self.protocol {
            Protocol::Any => true,
            Protocol::Tcp => tcp,
            Protocol::Udp => !tcp,
            Protocol::Icmp => false,
        };
        let ports = self.ports.unwrap_or(PortRange::ALL);
        let out_ok =
            matches!(self.direction, Direction::Out | Direction::Both) && ports.contains(remote_port);
        let in_ok = matches!(self.direction, Direction::In | Direction::Both) && ports.contains(local_port);
        protocol_ok && self.network.contains(remote) && (out_ok || in_ok)
    }
}

/// Parses `90s`, `15m`, `4h`, `7d`.
pub fn parse_duration(text: &str) -> Result<Duration, InvalidInput> {
    let fail = |problem: &str| InvalidInput::Duration { text: text.to_owned(), problem: problem.to_owned() };
    let trimmed = text.trim();
    let unit_at = trimmed.find(|c: char| !c.is_ascii_digit()).ok_or_else(|| fail("it has no unit"))?;
    let (number, unit) = trimmed.split_at(unit_at);
    if number.is_empty() {
        return Err(fail("it does not start with a whole number"));
    }
    let count: u64 = number.parse().map_err(|_| fail("the number is too large"))?;
    let seconds_per_unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(fail(&format!("unit '{unit}' is not one of s, m, h, d"))),
    };
    if count == 0 {
        return Err(fail("a duration must be longer than zero"));
    }
    let seconds = count.checked_mul(seconds_per_unit).filter(|s| *s <= 10 * 365 * 86_400);
    seconds.map(Duration::from_secs).ok_or_else(|| fail("it is longer than ten years"))
}

/// Checks a process name as the kernel stores it (`comm`: at most 15 bytes, no NUL, no '/').
pub fn validate_process_name(name: &str) -> Result<(), InvalidInput> {
    let fail = |problem: String| InvalidInput::ProcessName { name: name.to_owned(), problem };
    if name.is_empty() {
        return Err(fail("it is empty".into()));
    }
    if name.len() >= COMM_LEN {
        let kept = String::from_utf8_lossy(&name.as_bytes()[..COMM_LEN - 1]).into_owned();
        return Err(fail(format!(
            "it is {} bytes long; the kernel keeps only the first {} bytes of a process name ('{kept}'), so give that instead",
            name.len(),
            COMM_LEN - 1
        )));
    }
    if name.contains(['\0', '/']) {
        return Err(fail("it contains NUL or '/'; give the process name, not a path".into()));
    }
    Ok(())
}

/// The NUL-padded form the kernel reports for `name` (validated by [`validate_process_name`]).
pub fn comm_key(name: &str) -> [u8; COMM_LEN] {
    let mut key = [0u8; COMM_LEN];
    let bytes = name.as_bytes();
    let len = bytes.len().min(COMM_LEN - 1);
    key[..len].copy_from_slice(&bytes[..len]);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check_spec(spec: &str, expected: Result<&str, &str>) {
        match (spec.parse::<Exclusion>(), expected) {
            (Ok(exclusion), Ok(canonical)) => assert_eq!(exclusion.to_string(), canonical),
            (Err(error), Err(message)) => assert!(
                error.to_string().contains(message),
                "error for '{spec}' was '{error}', expected it to contain '{message}'"
            ),
            (got, want) => panic!("'{spec}': got {got:?}, expected {want:?}"),
        }
    }

    #[test]
    fn exclusion_specs() {
        check_spec("out,tcp,198.51.100.7/32,443", Ok("out,tcp,198.51.100.7/32,443"));
        check_spec("both,udp,fd00::/8,5000-5010", Ok("both,udp,fd00::/8,5000-5010"));
        check_spec("in,icmp,0.0.0.0/0", Ok("in,icmp,0.0.0.0/0"));
        check_spec(" out , any , 10.0.0.0/8 ", Ok("out,any,10.0.0.0/8"));
        check_spec("up,tcp,10.0.0.0/8", Err("direction 'up' is not one of in, out, both"));
        check_spec("out,sctp,10.0.0.0/8", Err("protocol 'sctp' is not one of tcp, udp, icmp, any"));
        check_spec("out,tcp,10.0.0.1", Err("'10.0.0.1' is not a CIDR"));
        check_spec("out,tcp,10.0.0.1/33", Err("prefix length '33' is not a number from 0 to 32"));
        check_spec("out,tcp,10.0.0.1/8", Err("has host bits set; the network is 10.0.0.0/8"));
        check_spec("out,tcp,300.0.0.0/8", Err("'300.0.0.0' is not an IPv4 or IPv6 address"));
        check_spec("out,tcp,10.0.0.0/8,0", Err("port '0' is not a number from 1 to 65535"));
        check_spec("out,tcp,10.0.0.0/8,70000", Err("port '70000' is not a number from 1 to 65535"));
        check_spec("out,tcp,10.0.0.0/8,20-10", Err("port range '20-10' ends before it starts"));
        check_spec("out,icmp,10.0.0.0/8,7", Err("ICMP has no ports"));
        check_spec("out,tcp", Err("it has 2 comma-separated fields, expected 3 or 4"));
        check_spec("out,tcp,10.0.0.0/8,1,2", Err("it has 5 comma-separated fields"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_mins(15)));
        assert_eq!(parse_duration("4h"), Ok(Duration::from_hours(4)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_hours(168)));
        for (text, problem) in [
            ("90", "it has no unit"),
            ("h", "does not start with a whole number"),
            ("-5m", "does not start with a whole number"),
            ("0s", "longer than zero"),
            ("5w", "unit 'w' is not one of s, m, h, d"),
            ("99999999999999999999s", "too large"),
            ("99999d", "longer than ten years"),
        ] {
            let error = parse_duration(text).unwrap_err().to_string();
            assert!(error.contains(problem), "'{text}': {error}");
        }
    }

    #[test]
    fn process_names() {
        assert!(validate_process_name("backup-agent").is_ok());
        let long = validate_process_name("elastic-endpoint-agent").unwrap_err().to_string();
        assert!(long.contains("('elastic-endpoin')"), "{long}");
        assert!(validate_process_name("/usr/bin/curl").is_err());
        assert_eq!(&comm_key("curl")[..5], b"curl\0");
    }

    #[test]
    fn sparing_existing_connections() {
        let out: Exclusion = "out,tcp,198.51.100.0/24,443".parse().unwrap();
        let remote: IpAddr = "198.51.100.9".parse().unwrap();
        assert!(out.spares_connection(true, remote, 40000, 443));
        assert!(!out.spares_connection(true, remote, 443, 40000));
        assert!(!out.spares_connection(true, "198.51.101.9".parse().unwrap(), 40000, 443));
        let inbound: Exclusion = "in,tcp,0.0.0.0/0,22".parse().unwrap();
        assert!(inbound.spares_connection(true, remote, 22, 51000));
        assert!(!inbound.spares_connection(false, remote, 22, 51000));
    }
}
