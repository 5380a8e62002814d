//! The wire contracts between `cordon serve` and `cordon-enforcer`: commands (orchestrator to
//! agent) and status reports (agent to orchestrator), both signed, version 1.
//!
//! Both travel as an envelope `{"payload": "<JSON text>", "signature": "<base64>"}`: the
//! Ed25519 signature covers the exact payload bytes, so nothing has to be canonicalised and a
//! verifier never parses what it has not verified. A report's envelope also names its `signer`
//! (the agent's public key), so that a key cordon has not enrolled yet can be shown to an
//! operator as pending; it is trusted only once an operator enrolls it. The JSON Schemas beside this crate
//! (`command.schema.json`, `status.schema.json`) describe the same messages for other tools.
//!
//! Only this crate and `schemas/` define serialized forms of these messages; domain types in
//! the enforcer and the orchestrator convert to and from them.

pub mod kafka;
pub mod lease;
pub mod rule_table;
pub mod secret;
pub mod spec;

pub use spec::{Direction, Exclusion, Network, PortRange, Protocol, SpecError};

use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, Verifier as _};
pub use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

/// The message format version this crate speaks.
pub const WIRE_VERSION: u32 = 1;

/// How an isolation ends: at its deadline, or when an operator releases the host. The one type
/// for it from a rule's decision to the agent's record and its status reports (`automatic`,
/// `manual` on the wire). Manual is the stronger: it orders after automatic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IsolationMode {
    /// At its deadline.
    Automatic,
    /// When an operator releases the host.
    Manual,
}

impl IsolationMode {
    /// `automatic` or `manual`, as on the wire.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            IsolationMode::Automatic => "automatic",
            IsolationMode::Manual => "manual",
        }
    }
}

/// The tag an isolated host carries, exactly: in the agent's status reports while it enforces, on
/// cordon's host record while the host is isolated or being isolated (or released, until its
/// agent confirms), in the operators' views and filters.
pub const ISOLATED_TAG: &str = "ISOLATED FROM NETWORK";

/// The topics' names when a configuration names none, for `cordon serve` and `cordon-enforcer`
/// alike (the commands and status topics join them).
pub mod topics {
    pub const DETECTIONS: &str = "edr.detections";
    pub const DEAD_LETTER: &str = "cordon.dead-letter";
    pub const COMMANDS: &str = "cordon.commands";
    pub const STATUS: &str = "cordon.status";
    pub const LEASE: &str = "cordon.lease";
}

/// A signed command, as it is stored in the commands topic (keyed by host id).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// The JSON text of a [`Command`].
    pub payload: String,
    /// Base64 (standard, padded) Ed25519 signature of the payload bytes.
    pub signature: String,
    /// Reports only: base64 of the agent's Ed25519 public key that made `signature`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
}

/// What the orchestrator asks one host's agent to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Command {
    pub version: u32,
    /// Unique per command; echoed in the status that answers it.
    pub command_id: String,
    /// The host that must apply it; every other host refuses it.
    pub host_id: String,
    /// Per host, strictly increasing: an agent refuses a command not newer than the last it
    /// applied, so a replayed or reordered command never applies twice.
    pub generation: u64,
    pub issued_at_ms: i64,
    /// After this instant the command is refused (a late delivery must not act).
    pub expires_at_ms: i64,
    pub action: Action,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    Isolate {
        /// `None`: manual (until released).
        duration_seconds: Option<u64>,
        /// Exclusion SPECs, `DIR,PROTO,CIDR[,PORTS]`.
        #[serde(default)]
        exclusions: Vec<String>,
        #[serde(default)]
        allowed_processes: Vec<String>,
        #[serde(default)]
        allow_dns: bool,
        #[serde(default)]
        allow_dhcp: bool,
        reason: String,
    },
    Release {
        reason: String,
    },
}

/// Why an agent refused a command (reported in [`Status::refusal`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    #[error("the message is not a command envelope")]
    Malformed,
    #[error("the command carries no signature")]
    Unsigned,
    #[error("the signature does not verify with the configured public key")]
    BadSignature,
    #[error("the command is for another host")]
    WrongHost,
    #[error("the command has expired")]
    Expired,
    #[error("the command is not newer than the last one applied (replayed or reordered)")]
    StaleGeneration,
    #[error("the command speaks a wire version this agent does not know")]
    UnsupportedVersion,
    #[error("the command is well-formed and authentic but its content is invalid")]
    InvalidContent,
    /// Authentic and valid, but applying it failed on the host (the kernel refused a program
    /// or a map, the agent's store could not be written): the host is as it was before.
    #[error("the command is authentic and valid but applying it failed on the host")]
    Failed,
}

impl Refusal {
    /// `snake_case`, as in JSON (and in the `reason` label of the refusal metrics).
    pub fn name(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed",
            Refusal::Unsigned => "unsigned",
            Refusal::BadSignature => "bad_signature",
            Refusal::WrongHost => "wrong_host",
            Refusal::Expired => "expired",
            Refusal::StaleGeneration => "stale_generation",
            Refusal::UnsupportedVersion => "unsupported_version",
            Refusal::InvalidContent => "invalid_content",
            Refusal::Failed => "failed",
        }
    }
}

/// Checks an envelope's signature, then its payload; returns the command only when it is
/// authentic. Host, expiry and generation are the caller's to check (they need its state).
pub fn open(envelope_bytes: &[u8], key: &VerifyingKey) -> Result<Command, Refusal> {
    open_with_any(envelope_bytes, std::slice::from_ref(key))
}

/// As [`open`], accepting a signature by any of `keys` (while signing keys are rotated, agents
/// trust the old key and the new one).
pub fn open_with_any(envelope_bytes: &[u8], keys: &[VerifyingKey]) -> Result<Command, Refusal> {
    let envelope: Envelope = serde_json::from_slice(envelope_bytes).map_err(|_| Refusal::Malformed)?;
    if envelope.signature.is_empty() {
        return Err(Refusal::Unsigned);
    }
    let signature = decode_signature(&envelope.signature).ok_or(Refusal::BadSignature)?;
    if !keys.iter().any(|key| key.verify(envelope.payload.as_bytes(), &signature).is_ok()) {
        return Err(Refusal::BadSignature);
    }
    let command: Command = serde_json::from_str(&envelope.payload).map_err(|_| Refusal::InvalidContent)?;
    if command.version != WIRE_VERSION {
        return Err(Refusal::UnsupportedVersion);
    }
    Ok(command)
}

fn decode_signature(text: &str) -> Option<Signature> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(text).ok()?;
    Signature::from_slice(&bytes).ok()
}

fn sign(payload: &str, key: &SigningKey) -> String {
    base64::engine::general_purpose::STANDARD.encode(key.sign(payload.as_bytes()).to_bytes())
}

/// Serializes and signs `command` into envelope bytes.
pub fn seal(command: &Command, key: &SigningKey) -> Vec<u8> {
    seal_text(serde_json::to_string(command).expect("a command always serializes"), key)
}

/// Signs a command's JSON text (as [`seal`] serializes it) into envelope bytes: for a sender that
/// keeps commands unsigned until they go out. Ed25519 signatures are deterministic: the same
/// text and key make the same envelope, whenever it is sealed.
pub fn seal_text(payload: String, key: &SigningKey) -> Vec<u8> {
    let signature = sign(&payload, key);
    serde_json::to_vec(&Envelope { payload, signature, signer: None }).expect("an envelope always serializes")
}

/// How many bytes [`seal_text`] makes of `payload`, with any key (a signature is always 64
/// bytes, 88 characters of base64), without signing.
#[must_use]
pub fn sealed_len(payload: &str) -> usize {
    let signature = "A".repeat(SIGNATURE_TEXT_LEN);
    let envelope = Envelope { payload: payload.to_owned(), signature, signer: None };
    serde_json::to_vec(&envelope).expect("an envelope always serializes").len()
}

/// The length of an Ed25519 signature in standard, padded base64.
const SIGNATURE_TEXT_LEN: usize = 88;

/// Serializes and signs an agent's `status` into envelope bytes that name the agent's key.
pub fn seal_report(status: &Status, key: &SigningKey) -> Vec<u8> {
    let payload = serde_json::to_string(status).expect("a status always serializes");
    let signature = sign(&payload, key);
    let signer = Some(key_to_base64(key.verifying_key().as_bytes()));
    serde_json::to_vec(&Envelope { payload, signature, signer }).expect("an envelope always serializes")
}

/// Why `cordon serve` did not apply a status report (the `reason` label of
/// `cordon_status_refused_total`). The first five are found by [`open_report`] alone; the rest
/// need cordon's registry of agents and the host's record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum ReportRefusal {
    #[error("the message is not a report envelope")]
    Malformed,
    #[error("the report carries no signature or names no signer (an agent older than signed reports?)")]
    Unsigned,
    #[error("the signature does not verify with the key the report names")]
    BadSignature,
    #[error("the signed payload is not a status report cordon can read")]
    InvalidContent,
    #[error("the report speaks a wire version cordon does not know")]
    UnsupportedVersion,
    #[error("the report is larger than [kafka] max_detection_bytes")]
    Oversized,
    #[error(
        "no agent key is enrolled for this host (the key is held as pending until an operator enrolls it)"
    )]
    UnknownAgent,
    #[error("this host's agent key was revoked")]
    RevokedAgent,
    #[error("signed by a key other than the one enrolled for this host")]
    WrongKey,
    #[error("the report names another host than its Kafka key")]
    WrongHost,
    #[error("the report is not newer than the last one applied for this host (replayed or reordered)")]
    Replayed,
    #[error("the report was sent more than the allowed skew in cordon's future")]
    FromTheFuture,
}

impl ReportRefusal {
    /// `snake_case`, as in JSON and in the metric's `reason` label.
    pub fn name(self) -> &'static str {
        match self {
            ReportRefusal::Malformed => "malformed",
            ReportRefusal::Unsigned => "unsigned",
            ReportRefusal::BadSignature => "bad_signature",
            ReportRefusal::InvalidContent => "invalid_content",
            ReportRefusal::UnsupportedVersion => "unsupported_version",
            ReportRefusal::Oversized => "oversized",
            ReportRefusal::UnknownAgent => "unknown_agent",
            ReportRefusal::RevokedAgent => "revoked_agent",
            ReportRefusal::WrongKey => "wrong_key",
            ReportRefusal::WrongHost => "wrong_host",
            ReportRefusal::Replayed => "replayed",
            ReportRefusal::FromTheFuture => "from_the_future",
        }
    }
}

/// A report whose signature verifies with the key it names. Whether that key is the one trusted
/// for the host is the registry's question, not this one's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedReport {
    pub signer: VerifyingKey,
    pub status: Status,
}

impl SignedReport {
    /// The signer's public key as base64 text (as enrolled and listed).
    pub fn signer_text(&self) -> String {
        key_to_base64(self.signer.as_bytes())
    }
}

/// Checks a report envelope's signature against the key it names, then reads its payload.
pub fn open_report(envelope_bytes: &[u8]) -> Result<SignedReport, ReportRefusal> {
    let envelope: Envelope = serde_json::from_slice(envelope_bytes).map_err(|_| ReportRefusal::Malformed)?;
    let Some(signer) = envelope.signer.as_deref().filter(|_| !envelope.signature.is_empty()) else {
        return Err(ReportRefusal::Unsigned);
    };
    let signer = verifying_key_from_base64(signer).map_err(|_| ReportRefusal::Malformed)?;
    let signature = decode_signature(&envelope.signature).ok_or(ReportRefusal::BadSignature)?;
    signer.verify_strict(envelope.payload.as_bytes(), &signature).map_err(|_| ReportRefusal::BadSignature)?;
    let status: Status =
        serde_json::from_str(&envelope.payload).map_err(|_| ReportRefusal::InvalidContent)?;
    if status.version != WIRE_VERSION {
        return Err(ReportRefusal::UnsupportedVersion);
    }
    Ok(SignedReport { signer, status })
}

/// What an agent reports: on every change, on every command (applied or refused), and as a
/// heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Status {
    pub version: u32,
    pub host_id: String,
    pub sent_at_ms: i64,
    pub kind: StatusKind,
    /// The command this answers, if any.
    pub command_id: Option<String>,
    /// The last generation applied.
    pub generation: u64,
    pub isolated: bool,
    /// Absent while not isolated.
    pub mode: Option<IsolationMode>,
    pub expires_at_ms: Option<i64>,
    pub exclusions: Vec<String>,
    /// Contains `ISOLATED FROM NETWORK` exactly while isolated.
    pub tags: Vec<String>,
    pub refusal: Option<Refusal>,
    /// What went wrong applying an authentic command.
    pub error: Option<String>,
    /// Tampering the agent found on its host and undid (links of the isolation detached by
    /// someone on the host and attached again): what it saw and did. Absent when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tampering: Option<String>,
    pub packets_dropped: u64,
    pub packets_allowed: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatusKind {
    /// A command was applied.
    Applied,
    /// A command was refused (see `refusal`) or failed (see `error`).
    Refused,
    /// The state changed without a command (deadline reached, local release, restore).
    Changed,
    Heartbeat,
}

/// Reads an Ed25519 public key from its base64 text (as `cordon keygen` writes it).
pub fn verifying_key_from_base64(text: &str) -> Result<VerifyingKey, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| format!("the public key is not base64: {e}"))?;
    let bytes: [u8; 32] = bytes.try_into().map_err(|_| "an Ed25519 public key is 32 bytes".to_owned())?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| format!("not an Ed25519 public key: {e}"))
}

/// Reads a public key file: one base64 key per line, blank lines and `#` comments ignored. More
/// than one key lets agents trust a new signing key before the orchestrator switches to it.
pub fn verifying_keys_from_text(text: &str) -> Result<Vec<VerifyingKey>, String> {
    let mut keys = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        keys.push(verifying_key_from_base64(line).map_err(|e| format!("line {}: {e}", index + 1))?);
    }
    if keys.is_empty() {
        return Err("the file holds no public key (one base64 key per line)".into());
    }
    Ok(keys)
}

/// Reads an Ed25519 signing key from its base64 text.
pub fn signing_key_from_base64(text: &str) -> Result<SigningKey, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| format!("the signing key is not base64: {e}"))?;
    let bytes: [u8; 32] = bytes.try_into().map_err(|_| "an Ed25519 signing key is 32 bytes".to_owned())?;
    Ok(SigningKey::from_bytes(&bytes))
}

/// Base64 text of a key's bytes (public or secret), for key files.
pub fn key_to_base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A fresh signing key from the operating system's random source.
pub fn generate_signing_key() -> SigningKey {
    SigningKey::generate(&mut rand_core::OsRng)
}

/// The partition a host's commands go to: Kafka's default (murmur2) partitioner, so an agent
/// reads only its own partition and the producer needs nothing special beyond
/// `partitioner=murmur2_random`.
pub fn partition_for(key: &[u8], partitions: u32) -> u32 {
    (murmur2(key) & 0x7fff_ffff) % partitions.max(1)
}

/// Kafka's murmur2 (seed 0x9747b28c), as its Java client and librdkafka's `murmur2` compute it.
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = u32::try_from(data.len()).unwrap_or(u32::MAX);
    let mut h = SEED ^ length;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command() -> Command {
        Command {
            version: WIRE_VERSION,
            command_id: "c-1".into(),
            host_id: "web-01".into(),
            generation: 3,
            issued_at_ms: 1_000,
            expires_at_ms: 61_000,
            action: Action::Isolate {
                duration_seconds: Some(14_400),
                exclusions: vec!["out,tcp,198.51.100.7/32,443".into()],
                allowed_processes: vec![],
                allow_dns: false,
                allow_dhcp: false,
                reason: "rule ransomware-encryption".into(),
            },
        }
    }

    #[test]
    fn a_key_file_may_hold_several_keys_and_any_of_them_verifies() {
        let (old_key, new_key, other) =
            (generate_signing_key(), generate_signing_key(), generate_signing_key());
        let text = format!(
            "# the key in use\n{}\n\n# the next one (rotation)\n  {}  \n",
            key_to_base64(old_key.verifying_key().as_bytes()),
            key_to_base64(new_key.verifying_key().as_bytes())
        );
        let keys = verifying_keys_from_text(&text).unwrap();
        assert_eq!(keys, vec![old_key.verifying_key(), new_key.verifying_key()]);
        let command = Command {
            version: WIRE_VERSION,
            command_id: "h-1".into(),
            host_id: "h".into(),
            generation: 1,
            issued_at_ms: 0,
            expires_at_ms: 1,
            action: Action::Release { reason: "r".into() },
        };
        assert_eq!(open_with_any(&seal(&command, &new_key), &keys), Ok(command.clone()));
        assert_eq!(open_with_any(&seal(&command, &old_key), &keys), Ok(command.clone()));
        assert_eq!(open_with_any(&seal(&command, &other), &keys), Err(Refusal::BadSignature));
        assert_eq!(open_with_any(&seal(&command, &new_key), &keys[..1]), Err(Refusal::BadSignature));
    }

    #[test]
    fn a_bad_key_line_is_named_and_an_empty_file_refused() {
        let good = key_to_base64(generate_signing_key().verifying_key().as_bytes());
        let error = verifying_keys_from_text(&format!("{good}\nnot-a-key\n")).unwrap_err();
        assert!(error.starts_with("line 2: the public key is not base64"), "{error}");
        assert!(verifying_keys_from_text("# nothing\n\n").unwrap_err().contains("no public key"));
    }

    #[test]
    fn the_sealed_length_is_known_without_signing_and_a_text_seals_as_its_command() {
        let key = generate_signing_key();
        let text = serde_json::to_string(&command()).unwrap();
        assert_eq!(seal_text(text.clone(), &key), seal(&command(), &key), "deterministic, whenever sealed");
        for text in [text, String::new(), "\"quoted\" \\ and \u{1}".to_owned(), "x".repeat(100_000)] {
            assert_eq!(sealed_len(&text), seal_text(text.clone(), &key).len(), "{text:.40}");
        }
    }

    #[test]
    fn sealed_commands_open_with_the_matching_key_only() {
        let key = generate_signing_key();
        let sealed = seal(&command(), &key);
        assert_eq!(open(&sealed, &key.verifying_key()), Ok(command()));
        let other = generate_signing_key();
        assert_eq!(open(&sealed, &other.verifying_key()), Err(Refusal::BadSignature));
    }

    #[test]
    fn tampering_unsigned_and_garbage_are_refused() {
        let key = generate_signing_key();
        let mut envelope: Envelope = serde_json::from_slice(&seal(&command(), &key)).unwrap();
        envelope.payload = envelope.payload.replace("web-01", "web-02");
        let tampered = serde_json::to_vec(&envelope).unwrap();
        assert_eq!(open(&tampered, &key.verifying_key()), Err(Refusal::BadSignature));
        envelope.signature = String::new();
        assert_eq!(
            open(&serde_json::to_vec(&envelope).unwrap(), &key.verifying_key()),
            Err(Refusal::Unsigned)
        );
        assert_eq!(open(b"{not json", &key.verifying_key()), Err(Refusal::Malformed));
        assert_eq!(open(b"{\"payload\":\"x\"}", &key.verifying_key()), Err(Refusal::Malformed));
    }

    fn status() -> Status {
        serde_json::from_str(include_str!("../examples/status.json")).unwrap()
    }

    #[test]
    fn sealed_reports_open_and_name_their_signer() {
        let key = generate_signing_key();
        let report = open_report(&seal_report(&status(), &key)).unwrap();
        assert_eq!(report.status, status());
        assert_eq!(report.signer, key.verifying_key());
        assert_eq!(verifying_key_from_base64(&report.signer_text()).unwrap(), key.verifying_key());
    }

    #[test]
    fn forged_reports_are_refused_by_reason() {
        let key = generate_signing_key();
        let sealed = seal_report(&status(), &key);
        let envelope: Envelope = serde_json::from_slice(&sealed).unwrap();
        let with = |change: &dyn Fn(&mut Envelope)| {
            let mut forged = envelope.clone();
            change(&mut forged);
            open_report(&serde_json::to_vec(&forged).unwrap())
        };
        // A bare status (an agent before signed reports, or a forger) is not an envelope.
        assert_eq!(open_report(&serde_json::to_vec(&status()).unwrap()), Err(ReportRefusal::Malformed));
        assert_eq!(with(&|e| e.signer = None), Err(ReportRefusal::Unsigned));
        assert_eq!(with(&|e| e.signature.clear()), Err(ReportRefusal::Unsigned));
        assert_eq!(
            with(&|e| e.payload = e.payload.replace("true", "false")),
            Err(ReportRefusal::BadSignature)
        );
        let other = key_to_base64(generate_signing_key().verifying_key().as_bytes());
        assert_eq!(with(&|e| e.signer = Some(other.clone())), Err(ReportRefusal::BadSignature));
        assert_eq!(with(&|e| e.signer = Some("AAAA".into())), Err(ReportRefusal::Malformed));
        assert_eq!(with(&|e| e.signature = "@@".into()), Err(ReportRefusal::BadSignature));
        let not_a_status =
            Envelope { payload: "{}".into(), signature: sign("{}", &key), signer: envelope.signer.clone() };
        assert_eq!(
            open_report(&serde_json::to_vec(&not_a_status).unwrap()),
            Err(ReportRefusal::InvalidContent)
        );
        let mut future = status();
        future.version = 2;
        assert_eq!(open_report(&seal_report(&future, &key)), Err(ReportRefusal::UnsupportedVersion));
    }

    #[test]
    fn a_command_envelope_is_not_a_report_and_a_report_is_not_a_command() {
        let key = generate_signing_key();
        assert_eq!(open_report(&seal(&command(), &key)), Err(ReportRefusal::Unsigned));
        assert_eq!(open(&seal_report(&status(), &key), &key.verifying_key()), Err(Refusal::InvalidContent));
    }

    #[test]
    fn example_messages_match_the_types() {
        let example = include_str!("../examples/command.json");
        let command: Command = serde_json::from_str(example).expect("examples/command.json is a command");
        assert_eq!(command.version, WIRE_VERSION);
        let status: Status = serde_json::from_str(include_str!("../examples/status.json"))
            .expect("examples/status.json is a status");
        assert_eq!(status.tags, vec!["ISOLATED FROM NETWORK"]);
    }

    #[test]
    fn murmur2_matches_kafka() {
        // Values from Kafka's own UtilsTest.testMurmur2 (as signed Java ints).
        let cases: [(&[u8], i32); 5] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
        ];
        for (input, expected) in cases {
            assert_eq!(murmur2(input).cast_signed(), expected, "{}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn keys_round_trip_through_base64() {
        let key = generate_signing_key();
        let public = verifying_key_from_base64(&key_to_base64(key.verifying_key().as_bytes())).unwrap();
        assert_eq!(public, key.verifying_key());
        let secret = signing_key_from_base64(&key_to_base64(&key.to_bytes())).unwrap();
        assert_eq!(secret.verifying_key(), key.verifying_key());
        assert!(verifying_key_from_base64("AAAA").unwrap_err().contains("32 bytes"));
    }
}
