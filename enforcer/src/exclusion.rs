//! The enforcer's side of its inputs: exclusions as the command line and commands give them,
//! which established connections an exclusion spares, durations and process names. Pure: no I/O.
//!
//! The SPEC grammar itself (`DIR,PROTO,CIDR[,PORTS]`) is `cordon_wire::spec`, shared with the
//! rules and the orchestrator.

use std::net::IpAddr;
use std::time::Duration;

use cordon_wire::spec::{Direction, Exclusion, Protocol, SpecError, SPEC_SYNTAX};
use enforcer_common::COMM_LEN;

/// Why an exclusion SPEC, a duration or a process name was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidInput {
    #[error("invalid exclusion `{spec}`: {problem} (expected {SPEC_SYNTAX})")]
    Exclusion { spec: String, problem: SpecError },
    #[error("invalid duration '{text}': {problem} (expected a whole number and a unit s, m, h or d, e.g. 90s, 15m, 4h, 7d)")]
    Duration { text: String, problem: String },
    #[error("invalid process name '{name}': {problem}")]
    ProcessName { name: String, problem: String },
}

/// Parses an exclusion SPEC; the error repeats the SPEC, since a command carries several.
pub fn parse_exclusion(spec: &str) -> Result<Exclusion, InvalidInput> {
    spec.parse().map_err(|problem| InvalidInput::Exclusion { spec: spec.to_owned(), problem })
}

/// Whether `exclusion` spares an established connection (used when severing): an `out`
/// exclusion by the remote port, an `in` exclusion by the local port.
pub fn spares_connection(
    exclusion: Exclusion,
    tcp: bool,
    remote: IpAddr,
    local_port: u16,
    remote_port: u16,
) -> bool {
    let protocol_ok = match exclusion.protocol() {
        Protocol::Any => true,
        Protocol::Tcp => tcp,
        Protocol::Udp => !tcp,
        Protocol::Icmp => false,
    };
    let port_ok = |port| exclusion.ports().is_none_or(|ports| ports.contains(port));
    let direction = exclusion.direction();
    let out_ok = matches!(direction, Direction::Out | Direction::Both) && port_ok(remote_port);
    let in_ok = matches!(direction, Direction::In | Direction::Both) && port_ok(local_port);
    protocol_ok && exclusion.network().contains(remote) && (out_ok || in_ok)
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

    #[test]
    fn exclusion_errors_name_the_spec_and_the_syntax() {
        assert_eq!(
            parse_exclusion("out,tcp,198.51.100.7/32,443").unwrap().to_string(),
            "out,tcp,198.51.100.7/32,443"
        );
        assert_eq!(
            parse_exclusion("out,tcp,10.0.0.1/8,443").unwrap_err().to_string(),
            "invalid exclusion `out,tcp,10.0.0.1/8,443`: `10.0.0.1/8` has host bits set; the network is \
             10.0.0.0/8 (expected DIR,PROTO,CIDR[,PORTS], e.g. out,tcp,198.51.100.7/32,443)"
        );
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
        assert!(spares_connection(out, true, remote, 40000, 443));
        assert!(!spares_connection(out, true, remote, 443, 40000));
        assert!(!spares_connection(out, true, "198.51.101.9".parse().unwrap(), 40000, 443));
        let inbound: Exclusion = "in,tcp,0.0.0.0/0,22".parse().unwrap();
        assert!(spares_connection(inbound, true, remote, 22, 51000));
        assert!(!spares_connection(inbound, false, remote, 22, 51000));
        let every_port: Exclusion = "both,any,198.51.100.0/24".parse().unwrap();
        assert!(spares_connection(every_port, false, remote, 1, 65535));
    }
}
