//! Exclusion SPECs, the holes left open in an isolation: `DIR,PROTO,CIDR[,PORTS]`.
//!
//! The same syntax as cordon-enforcer's `--allow`: DIR is `in`, `out` or `both`; PROTO is `tcp`,
//! `udp`, `icmp` or `any`; CIDR is an IPv4 or IPv6 network with its prefix; PORTS is a port
//! (`443`) or an inclusive range (`5000-5010`) in 1-65535, not allowed with `icmp`.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    In,
    Out,
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    Any,
}

/// An IP network: an address whose bits past the prefix are zero, and the prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNetwork {
    address: IpAddr,
    prefix: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NetworkError {
    #[error("`{0}` has no prefix length")]
    MissingPrefix(String),
    #[error("`{0}` is not an IP address")]
    BadAddress(String),
    #[error("prefix length `{prefix}` is not valid for {family} (0-{max})")]
    BadPrefix { prefix: String, family: &'static str, max: u8 },
    #[error("`{text}` has bits set past the prefix; the network is {network}")]
    HostBitsSet { text: String, network: String },
}

impl IpNetwork {
    #[must_use]
    pub fn address(&self) -> IpAddr {
        self.address
    }

    #[must_use]
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `address` lies in this network (an IPv4 address never lies in an IPv6 network).
    #[must_use]
    pub fn contains(&self, address: IpAddr) -> bool {
        match (self.address, address) {
            (IpAddr::V4(network), IpAddr::V4(address)) => {
                let mask = mask_v4(self.prefix);
                u32::from(network) == u32::from(address) & mask
            }
            (IpAddr::V6(network), IpAddr::V6(address)) => {
                let mask = mask_v6(self.prefix);
                u128::from(network) == u128::from(address) & mask
            }
            _ => false,
        }
    }

    /// Parses `ADDRESS/PREFIX`. With `require_prefix` false, a bare address is a single-host network.
    pub fn parse(text: &str, require_prefix: bool) -> Result<Self, NetworkError> {
        let (address_text, prefix_text) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None if require_prefix => return Err(NetworkError::MissingPrefix(text.to_owned())),
            None => (text, None),
        };
        let address =
            IpAddr::from_str(address_text).map_err(|_| NetworkError::BadAddress(address_text.to_owned()))?;
        let (family, max) = if address.is_ipv4() { ("IPv4", 32) } else { ("IPv6", 128) };
        let prefix = match prefix_text {
            None => max,
            Some(prefix_text) => match prefix_text.parse::<u8>() {
                Ok(prefix) if prefix <= max && !prefix_text.starts_with('+') => prefix,
                _ => return Err(NetworkError::BadPrefix { prefix: prefix_text.to_owned(), family, max }),
            },
        };
        let network = Self { address: masked(address, prefix), prefix };
        if network.address != address {
            return Err(NetworkError::HostBitsSet { text: text.to_owned(), network: network.to_string() });
        }
        Ok(network)
    }
}

fn mask_v4(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask_v6(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

fn masked(address: IpAddr, prefix: u8) -> IpAddr {
    match address {
        IpAddr::V4(v4) => IpAddr::V4((u32::from(v4) & mask_v4(prefix)).into()),
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & mask_v6(prefix)).into()),
    }
}

impl fmt::Display for IpNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

/// An inclusive range of ports, `first <= last`, both in 1-65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

/// One exclusion: traffic that stays allowed while the host is isolated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AllowSpec {
    pub direction: Direction,
    pub protocol: Protocol,
    pub network: IpNetwork,
    pub ports: Option<PortRange>,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AllowSpecError {
    #[error("SPEC `{0}` has {1} fields; expected DIR,PROTO,CIDR or DIR,PROTO,CIDR,PORTS")]
    FieldCount(String, usize),
    #[error("SPEC `{0}` contains whitespace")]
    Whitespace(String),
    #[error("unknown direction `{0}`; expected in, out or both")]
    Direction(String),
    #[error("unknown protocol `{0}`; expected tcp, udp, icmp or any")]
    Protocol(String),
    #[error("invalid CIDR: {0}")]
    Network(#[from] NetworkError),
    #[error("invalid port `{0}`; ports are 1-65535")]
    Port(String),
    #[error("invalid port range `{0}`: the first port is above the last")]
    ReversedRange(String),
    #[error("ports are not allowed with icmp")]
    PortsWithIcmp,
}

/// Parses an exclusion SPEC, `DIR,PROTO,CIDR[,PORTS]`, exactly as cordon-enforcer's `--allow` does.
pub fn parse_allow_spec(text: &str) -> Result<AllowSpec, AllowSpecError> {
    if text.chars().any(char::is_whitespace) {
        return Err(AllowSpecError::Whitespace(text.to_owned()));
    }
    let fields: Vec<&str> = text.split(',').collect();
    if !(3..=4).contains(&fields.len()) {
        return Err(AllowSpecError::FieldCount(text.to_owned(), fields.len()));
    }
    let direction = match fields[0] {
        "in" => Direction::In,
        "out" => Direction::Out,
        "both" => Direction::Both,
        other => return Err(AllowSpecError::Direction(other.to_owned())),
    };
    let protocol = match fields[1] {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        "icmp" => Protocol::Icmp,
        "any" => Protocol::Any,
        other => return Err(AllowSpecError::Protocol(other.to_owned())),
    };
    let network = IpNetwork::parse(fields[2], true)?;
    let ports = match fields.get(3) {
        None => None,
        Some(_) if protocol == Protocol::Icmp => return Err(AllowSpecError::PortsWithIcmp),
        Some(ports) => Some(parse_ports(ports)?),
    };
    Ok(AllowSpec { direction, protocol, network, ports })
}

fn parse_ports(text: &str) -> Result<PortRange, AllowSpecError> {
    let port = |part: &str| match part.parse::<u16>() {
        Ok(port) if port > 0 && part.bytes().all(|b| b.is_ascii_digit()) => Ok(port),
        _ => Err(AllowSpecError::Port(part.to_owned())),
    };
    let range = if let Some((first, last)) = text.split_once('-') {
        PortRange { first: port(first)?, last: port(last)? }
    } else {
        let single = port(text)?;
        PortRange { first: single, last: single }
    };
    if range.first > range.last {
        return Err(AllowSpecError::ReversedRange(text.to_owned()));
    }
    Ok(range)
}

impl fmt::Display for AllowSpec {
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

impl serde::Serialize for AllowSpec {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for AllowSpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_allow_spec(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> String {
        parse_allow_spec(text).unwrap_err().to_string()
    }

    #[test]
    fn parses_and_prints_back_the_same_spec() {
        for spec in [
            "out,tcp,198.51.100.7/32,443",
            "both,any,fd00::/8",
            "in,udp,10.0.0.0/8,5000-5010",
            "out,icmp,0.0.0.0/0",
        ] {
            assert_eq!(parse_allow_spec(spec).unwrap().to_string(), spec);
        }
        let spec = parse_allow_spec("in,udp,10.0.0.0/8,5000-5010").unwrap();
        assert_eq!(spec.ports, Some(PortRange { first: 5000, last: 5010 }));
        assert_eq!(spec.direction, Direction::In);
    }

    #[test]
    fn rejects_each_mistake_precisely() {
        assert_eq!(
            error("out,tcp"),
            "SPEC `out,tcp` has 2 fields; expected DIR,PROTO,CIDR or DIR,PROTO,CIDR,PORTS"
        );
        assert_eq!(error("out, tcp,1.2.3.4/32"), "SPEC `out, tcp,1.2.3.4/32` contains whitespace");
        assert_eq!(error("up,tcp,1.2.3.4/32"), "unknown direction `up`; expected in, out or both");
        assert_eq!(error("out,sctp,1.2.3.4/32"), "unknown protocol `sctp`; expected tcp, udp, icmp or any");
        assert_eq!(error("out,tcp,1.2.3.4"), "invalid CIDR: `1.2.3.4` has no prefix length");
        assert_eq!(error("out,tcp,1.2.3/24"), "invalid CIDR: `1.2.3` is not an IP address");
        assert_eq!(
            error("out,tcp,1.2.3.4/33"),
            "invalid CIDR: prefix length `33` is not valid for IPv4 (0-32)"
        );
        assert_eq!(
            error("out,tcp,fd00::/129"),
            "invalid CIDR: prefix length `129` is not valid for IPv6 (0-128)"
        );
        assert_eq!(
            error("out,tcp,198.51.100.7/24"),
            "invalid CIDR: `198.51.100.7/24` has bits set past the prefix; the network is 198.51.100.0/24"
        );
        assert_eq!(error("out,tcp,1.2.3.4/32,0"), "invalid port `0`; ports are 1-65535");
        assert_eq!(error("out,tcp,1.2.3.4/32,65536"), "invalid port `65536`; ports are 1-65535");
        assert_eq!(error("out,tcp,1.2.3.4/32,+80"), "invalid port `+80`; ports are 1-65535");
        assert_eq!(
            error("out,tcp,1.2.3.4/32,5010-5000"),
            "invalid port range `5010-5000`: the first port is above the last"
        );
        assert_eq!(error("out,icmp,1.2.3.4/32,7"), "ports are not allowed with icmp");
    }

    #[test]
    fn networks_contain_their_addresses_only() {
        let v4 = IpNetwork::parse("10.1.0.0/16", true).unwrap();
        assert!(v4.contains("10.1.255.3".parse().unwrap()));
        assert!(!v4.contains("10.2.0.1".parse().unwrap()));
        assert!(!v4.contains("::1".parse().unwrap()));
        let everything = IpNetwork::parse("0.0.0.0/0", true).unwrap();
        assert!(everything.contains("203.0.113.9".parse().unwrap()));
        let v6 = IpNetwork::parse("fd00::/8", true).unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        assert_eq!(IpNetwork::parse("192.0.2.1", false).unwrap().to_string(), "192.0.2.1/32");
    }
}
