//! The exclusion SPEC grammar, `DIR,PROTO,CIDR[,PORTS]`: the one parser behind the enforcer's
//! `--allow`, the `allow:` of rule files and the `exclusions` of isolate commands.
//!
//! - DIR: `in`, `out` or `both`.
//! - PROTO: `tcp`, `udp`, `icmp` (ICMP for IPv4, `ICMPv6` for IPv6) or `any`.
//! - CIDR: an IPv4 or IPv6 network with its prefix length (`198.51.100.7/32`, `fd00::/8`). A
//!   network with host bits set (`10.0.0.1/8`) is refused, never narrowed or widened in silence:
//!   the message names the network it would be.
//! - PORTS: a port (`443`) or an inclusive range (`5000-5010`) in 1-65535; not with `icmp`.
//!
//! Nothing else is accepted: no whitespace, no empty fields, no signs. Every type here prints in
//! the form it parses from (`Display` and `FromStr` round-trip), serializes as that text, and
//! can hold only what the grammar allows. [`SpecError`] names the part that is wrong; callers add
//! where it was (a file position, a command-line option, a command).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// What a SPEC looks like, for hints and usage messages.
pub const SPEC_SYNTAX: &str = "DIR,PROTO,CIDR[,PORTS], e.g. out,tcp,198.51.100.7/32,443";

/// Which way a flow goes, seen from the isolated host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Connections and datagrams towards this host; PORTS name the local port.
    In,
    /// Connections and datagrams this host starts; PORTS name the remote port.
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

/// An IP network: an address with every bit past the prefix zero, and the prefix length.
/// Ordered by address, then prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Network {
    address: IpAddr,
    prefix_len: u8,
}

/// An inclusive range of ports, `first <= last`, both in 1-65535; a single port has
/// `first == last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortRange {
    first: u16,
    last: u16,
}

/// One exclusion: traffic that keeps flowing while the host is isolated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Exclusion {
    direction: Direction,
    protocol: Protocol,
    network: Network,
    ports: Option<PortRange>,
}

/// Why a SPEC, or one of its parts, was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("the SPEC is empty")]
    Empty,
    #[error("`{0}` contains whitespace; separate the fields with commas and no spaces")]
    Whitespace(String),
    #[error("expected 3 or 4 comma-separated fields, found {0}")]
    FieldCount(usize),
    #[error("the {0} field is empty")]
    EmptyField(&'static str),
    #[error("unknown direction `{0}`; expected in, out or both")]
    Direction(String),
    #[error("unknown protocol `{0}`; expected tcp, udp, icmp or any")]
    Protocol(String),
    #[error("`{0}` is not an IPv4 or IPv6 address")]
    Address(String),
    #[error("`{address}` has no prefix length; for this one address write {address}/{max}")]
    MissingPrefix { address: String, max: u8 },
    #[error("prefix length `{prefix}` is not valid for {family} (0-{max})")]
    PrefixLength { prefix: String, family: &'static str, max: u8 },
    #[error("`{text}` has host bits set; the network is {network}")]
    HostBits { text: String, network: Network },
    #[error("port `{0}` is not a number from 1 to 65535")]
    Port(String),
    #[error("port range `{0}` needs a port on each side of the `-`")]
    IncompleteRange(String),
    #[error("port range `{text}` runs backwards; write {last}-{first}")]
    ReversedRange { text: String, first: u16, last: u16 },
    #[error("ICMP has no ports; drop the PORTS field `{0}` or use tcp, udp or any")]
    PortsWithIcmp(String),
}

impl Network {
    /// A single address: /32 or /128.
    pub fn host(address: IpAddr) -> Network {
        Network { address, prefix_len: if address.is_ipv4() { 32 } else { 128 } }
    }

    /// The network address (host bits zero).
    pub fn address(self) -> IpAddr {
        self.address
    }

    pub fn prefix_len(self) -> u8 {
        self.prefix_len
    }

    /// Whether `address` lies in this network (an IPv4 address never lies in an IPv6 network).
    pub fn contains(self, address: IpAddr) -> bool {
        address.is_ipv4() == self.address.is_ipv4() && masked(address, self.prefix_len) == self.address
    }

    /// Whether every address of `other` lies in `self`.
    pub fn covers(self, other: Network) -> bool {
        self.prefix_len <= other.prefix_len && self.contains(other.address)
    }
}

/// `address` with every bit past `prefix_len` cleared.
fn masked(address: IpAddr, prefix_len: u8) -> IpAddr {
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

impl PortRange {
    /// The ports `first` to `last`, both included.
    pub fn new(first: u16, last: u16) -> Result<PortRange, SpecError> {
        if first == 0 || last == 0 {
            return Err(SpecError::Port("0".to_owned()));
        }
        if first > last {
            return Err(SpecError::ReversedRange { text: format!("{first}-{last}"), first, last });
        }
        Ok(PortRange { first, last })
    }

    pub fn single(port: u16) -> Result<PortRange, SpecError> {
        PortRange::new(port, port)
    }

    pub fn first(self) -> u16 {
        self.first
    }

    pub fn last(self) -> u16 {
        self.last
    }

    pub fn contains(self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl Exclusion {
    /// `ports: None` means every port; ICMP takes no ports.
    pub fn new(
        direction: Direction,
        protocol: Protocol,
        network: Network,
        ports: Option<PortRange>,
    ) -> Result<Exclusion, SpecError> {
        match ports {
            Some(ports) if protocol == Protocol::Icmp => Err(SpecError::PortsWithIcmp(ports.to_string())),
            _ => Ok(Exclusion { direction, protocol, network, ports }),
        }
    }

    pub fn direction(self) -> Direction {
        self.direction
    }

    pub fn protocol(self) -> Protocol {
        self.protocol
    }

    pub fn network(self) -> Network {
        self.network
    }

    /// `None`: every port.
    pub fn ports(self) -> Option<PortRange> {
        self.ports
    }
}

/// `FromStr` and `Display` of a closed set of keywords, from one list: they cannot disagree, and
/// `Display` is an exhaustive match.
macro_rules! keywords {
    ($type:ident, $error:path, { $($variant:ident = $keyword:literal),+ $(,)? }) => {
        impl FromStr for $type {
            type Err = SpecError;

            fn from_str(text: &str) -> Result<Self, SpecError> {
                match text {
                    $($keyword => Ok($type::$variant),)+
                    other => Err($error(other.to_owned())),
                }
            }
        }

        impl fmt::Display for $type {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(match self {
                    $($type::$variant => $keyword,)+
                })
            }
        }
    };
}

keywords!(Direction, SpecError::Direction, { In = "in", Out = "out", Both = "both" });
keywords!(Protocol, SpecError::Protocol, { Tcp = "tcp", Udp = "udp", Icmp = "icmp", Any = "any" });

impl FromStr for Network {
    type Err = SpecError;

    /// `ADDRESS/PREFIX_LEN`; the prefix length is required.
    fn from_str(text: &str) -> Result<Self, SpecError> {
        let (address_text, prefix) = text.split_once('/').unwrap_or((text, ""));
        let address: IpAddr =
            address_text.parse().map_err(|_| SpecError::Address(address_text.to_owned()))?;
        let (family, max) = if address.is_ipv4() { ("IPv4", 32) } else { ("IPv6", 128) };
        if prefix.is_empty() {
            return Err(SpecError::MissingPrefix { address: address_text.to_owned(), max });
        }
        let prefix_len = decimal::<u8>(prefix)
            .filter(|len| *len <= max)
            .ok_or_else(|| SpecError::PrefixLength { prefix: prefix.to_owned(), family, max })?;
        let network = Network { address: masked(address, prefix_len), prefix_len };
        if network.address != address {
            return Err(SpecError::HostBits { text: text.to_owned(), network });
        }
        Ok(network)
    }
}

impl FromStr for PortRange {
    type Err = SpecError;

    /// `PORT` or `FIRST-LAST`.
    fn from_str(text: &str) -> Result<Self, SpecError> {
        let port = |part: &str| match decimal::<u16>(part) {
            _ if part.is_empty() && text.contains('-') => Err(SpecError::IncompleteRange(text.to_owned())),
            Some(port) if port != 0 => Ok(port),
            _ => Err(SpecError::Port(part.to_owned())),
        };
        let (first, last) = match text.split_once('-') {
            Some((first, last)) => (port(first)?, port(last)?),
            None => port(text).map(|single| (single, single))?,
        };
        if first > last {
            return Err(SpecError::ReversedRange { text: text.to_owned(), first, last });
        }
        Ok(PortRange { first, last })
    }
}

/// A number written in decimal digits only (`str::parse` alone would also take a leading `+`).
fn decimal<T: FromStr>(text: &str) -> Option<T> {
    text.bytes().all(|b| b.is_ascii_digit()).then(|| text.parse().ok()).flatten()
}

impl FromStr for Exclusion {
    type Err = SpecError;

    fn from_str(text: &str) -> Result<Self, SpecError> {
        if text.is_empty() {
            return Err(SpecError::Empty);
        }
        let fields: Vec<&str> = text.split(',').collect();
        if let Some(field) = fields.iter().find(|field| field.contains(char::is_whitespace)) {
            return Err(SpecError::Whitespace((*field).to_owned()));
        }
        if !(3..=4).contains(&fields.len()) {
            return Err(SpecError::FieldCount(fields.len()));
        }
        if let Some((_, name)) =
            fields.iter().zip(["DIR", "PROTO", "CIDR", "PORTS"]).find(|(f, _)| f.is_empty())
        {
            return Err(SpecError::EmptyField(name));
        }
        let direction = fields[0].parse()?;
        let protocol = fields[1].parse()?;
        let network = fields[2].parse()?;
        let ports = match fields.get(3) {
            None => None,
            // Refused before the ports are read: whatever they are, ICMP has none.
            Some(ports) if protocol == Protocol::Icmp => {
                return Err(SpecError::PortsWithIcmp((*ports).to_owned()));
            }
            Some(ports) => Some(ports.parse()?),
        };
        Ok(Exclusion { direction, protocol, network, ports })
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix_len)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

impl fmt::Display for Exclusion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{},{}", self.direction, self.protocol, self.network)?;
        match self.ports {
            Some(ports) => write!(f, ",{ports}"),
            None => Ok(()),
        }
    }
}

/// Serializes each type as its text and deserializes it through `FromStr`: the serialized form
/// is the grammar, with the same error messages.
macro_rules! serde_as_text {
    ($($type:ty),*) => {$(
        impl serde::Serialize for $type {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $type {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                String::deserialize(deserializer)?.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}

serde_as_text!(Direction, Protocol, Network, PortRange, Exclusion);

#[cfg(test)]
mod tests {
    use super::*;

    /// Good SPECs and the text they print as (the same text, unless the input was not canonical).
    const GOOD: &[(&str, &str)] = &[
        ("out,tcp,198.51.100.7/32,443", "out,tcp,198.51.100.7/32,443"),
        ("both,udp,fd00::/8,5000-5010", "both,udp,fd00::/8,5000-5010"),
        ("in,icmp,0.0.0.0/0", "in,icmp,0.0.0.0/0"),
        ("both,any,::/0", "both,any,::/0"),
        ("in,tcp,10.0.0.0/8,1-65535", "in,tcp,10.0.0.0/8,1-65535"),
        ("out,udp,10.0.0.0/8,53-53", "out,udp,10.0.0.0/8,53"),
        ("out,tcp,10.0.0.0/8,0443", "out,tcp,10.0.0.0/8,443"),
        ("out,any,FD00:0:0::/16", "out,any,fd00::/16"),
        ("in,tcp,::ffff:192.0.2.1/128,22", "in,tcp,::ffff:192.0.2.1/128,22"),
    ];

    /// Bad SPECs and their exact messages.
    const BAD: &[(&str, &str)] = &[
        ("", "the SPEC is empty"),
        ("out, tcp,1.2.3.4/32", "` tcp` contains whitespace; separate the fields with commas and no spaces"),
        (
            "out tcp 1.2.3.4/32",
            "`out tcp 1.2.3.4/32` contains whitespace; separate the fields with commas and no spaces",
        ),
        (
            "out,tcp,1.2.3.4/32,443 ",
            "`443 ` contains whitespace; separate the fields with commas and no spaces",
        ),
        ("out,tcp", "expected 3 or 4 comma-separated fields, found 2"),
        ("out,tcp,10.0.0.0/8,1,2", "expected 3 or 4 comma-separated fields, found 5"),
        (",tcp,10.0.0.0/8", "the DIR field is empty"),
        ("out,,10.0.0.0/8", "the PROTO field is empty"),
        ("out,tcp,,443", "the CIDR field is empty"),
        ("out,tcp,10.0.0.0/8,", "the PORTS field is empty"),
        ("up,tcp,10.0.0.0/8", "unknown direction `up`; expected in, out or both"),
        ("OUT,tcp,10.0.0.0/8", "unknown direction `OUT`; expected in, out or both"),
        ("out,sctp,10.0.0.0/8", "unknown protocol `sctp`; expected tcp, udp, icmp or any"),
        ("out,tcp,1.2.3/24", "`1.2.3` is not an IPv4 or IPv6 address"),
        ("out,tcp,300.0.0.0/8", "`300.0.0.0` is not an IPv4 or IPv6 address"),
        ("out,tcp,example.com/32", "`example.com` is not an IPv4 or IPv6 address"),
        (
            "out,tcp,198.51.100.7",
            "`198.51.100.7` has no prefix length; for this one address write 198.51.100.7/32",
        ),
        ("out,tcp,fd00::1", "`fd00::1` has no prefix length; for this one address write fd00::1/128"),
        ("out,tcp,10.0.0.0/", "`10.0.0.0` has no prefix length; for this one address write 10.0.0.0/32"),
        ("out,tcp,1.2.3.4/33", "prefix length `33` is not valid for IPv4 (0-32)"),
        ("out,tcp,fd00::/129", "prefix length `129` is not valid for IPv6 (0-128)"),
        ("out,tcp,10.0.0.0/+8", "prefix length `+8` is not valid for IPv4 (0-32)"),
        ("out,tcp,10.0.0.0/8/8", "prefix length `8/8` is not valid for IPv4 (0-32)"),
        ("out,tcp,10.0.0.1/8", "`10.0.0.1/8` has host bits set; the network is 10.0.0.0/8"),
        ("out,tcp,198.51.100.7/24", "`198.51.100.7/24` has host bits set; the network is 198.51.100.0/24"),
        ("both,any,fd00::1/8", "`fd00::1/8` has host bits set; the network is fd00::/8"),
        ("out,tcp,10.0.0.0/8,0", "port `0` is not a number from 1 to 65535"),
        ("out,tcp,10.0.0.0/8,65536", "port `65536` is not a number from 1 to 65535"),
        ("out,tcp,10.0.0.0/8,+80", "port `+80` is not a number from 1 to 65535"),
        ("out,tcp,10.0.0.0/8,https", "port `https` is not a number from 1 to 65535"),
        ("out,tcp,10.0.0.0/8,0-10", "port `0` is not a number from 1 to 65535"),
        ("out,tcp,10.0.0.0/8,1-2-3", "port `2-3` is not a number from 1 to 65535"),
        ("out,tcp,10.0.0.0/8,5000-", "port range `5000-` needs a port on each side of the `-`"),
        ("out,tcp,10.0.0.0/8,-5000", "port range `-5000` needs a port on each side of the `-`"),
        ("out,tcp,10.0.0.0/8,5010-5000", "port range `5010-5000` runs backwards; write 5000-5010"),
        ("out,icmp,10.0.0.0/8,7", "ICMP has no ports; drop the PORTS field `7` or use tcp, udp or any"),
        ("out,icmp,10.0.0.0/8,0", "ICMP has no ports; drop the PORTS field `0` or use tcp, udp or any"),
    ];

    #[test]
    fn good_specs_parse_and_print_canonically() {
        for (spec, canonical) in GOOD {
            let exclusion: Exclusion = spec.parse().unwrap_or_else(|e| panic!("`{spec}`: {e}"));
            assert_eq!(exclusion.to_string(), *canonical, "`{spec}`");
            assert_eq!(canonical.parse::<Exclusion>(), Ok(exclusion), "`{canonical}` does not round-trip");
        }
    }

    #[test]
    fn bad_specs_name_the_bad_part() {
        for (spec, message) in BAD {
            match spec.parse::<Exclusion>() {
                Ok(exclusion) => panic!("`{spec}` parsed as `{exclusion}`, expected: {message}"),
                Err(error) => assert_eq!(error.to_string(), *message, "`{spec}`"),
            }
        }
    }

    #[test]
    fn parts_are_read_as_written() {
        let exclusion: Exclusion = "in,udp,10.0.0.0/8,5000-5010".parse().unwrap();
        assert_eq!(exclusion.direction(), Direction::In);
        assert_eq!(exclusion.protocol(), Protocol::Udp);
        assert_eq!(exclusion.network().address(), "10.0.0.0".parse::<IpAddr>().unwrap());
        assert_eq!(exclusion.network().prefix_len(), 8);
        assert_eq!(exclusion.ports(), Some(PortRange::new(5000, 5010).unwrap()));
        assert_eq!("in,icmp,10.0.0.0/8".parse::<Exclusion>().unwrap().ports(), None);
    }

    #[test]
    fn constructors_keep_the_grammar() {
        let network = Network::host("192.0.2.1".parse().unwrap());
        assert_eq!(network.to_string(), "192.0.2.1/32");
        assert_eq!(Network::host("fd00::1".parse().unwrap()).to_string(), "fd00::1/128");
        let https = PortRange::single(443).unwrap();
        let exclusion = Exclusion::new(Direction::Out, Protocol::Tcp, network, Some(https)).unwrap();
        assert_eq!(exclusion.to_string(), "out,tcp,192.0.2.1/32,443");
        assert_eq!(
            Exclusion::new(Direction::Out, Protocol::Icmp, network, Some(https)).unwrap_err().to_string(),
            "ICMP has no ports; drop the PORTS field `443` or use tcp, udp or any"
        );
        assert_eq!(PortRange::single(0).unwrap_err().to_string(), "port `0` is not a number from 1 to 65535");
        assert_eq!(
            PortRange::new(20, 10).unwrap_err().to_string(),
            "port range `20-10` runs backwards; write 10-20"
        );
    }

    #[test]
    fn networks_contain_and_cover() {
        let v4: Network = "10.1.0.0/16".parse().unwrap();
        assert!(v4.contains("10.1.255.3".parse().unwrap()));
        assert!(!v4.contains("10.2.0.1".parse().unwrap()));
        assert!(!v4.contains("::1".parse().unwrap()));
        let everything: Network = "0.0.0.0/0".parse().unwrap();
        assert!(everything.contains("203.0.113.9".parse().unwrap()));
        assert!(everything.covers(v4));
        assert!(!v4.covers(everything));
        assert!(!"::/0".parse::<Network>().unwrap().covers(v4));
        let v6: Network = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
    }

    #[test]
    fn serialized_as_text_with_the_same_errors() {
        let exclusion: Exclusion = "both,udp,fd00::/8,5000-5010".parse().unwrap();
        let json = serde_json::to_string(&exclusion).unwrap();
        assert_eq!(json, r#""both,udp,fd00::/8,5000-5010""#);
        assert_eq!(serde_json::from_str::<Exclusion>(&json).unwrap(), exclusion);
        let error = serde_json::from_str::<Exclusion>(r#""out,tcp,10.0.0.1/8""#).unwrap_err();
        assert_eq!(error.to_string(), "`10.0.0.1/8` has host bits set; the network is 10.0.0.0/8");
        assert_eq!(serde_json::to_string(&Protocol::Icmp).unwrap(), r#""icmp""#);
        assert_eq!(serde_json::from_str::<Direction>(r#""both""#).unwrap(), Direction::Both);
        assert_eq!(serde_json::to_string(&exclusion.network()).unwrap(), r#""fd00::/8""#);
        assert_eq!(serde_json::to_string(&exclusion.ports()).unwrap(), r#""5000-5010""#);
    }
}
