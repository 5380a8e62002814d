//! The lease: how a `cordon serve` tells its twins (another service started with the same
//! `instance_id`) that it is the active one. Each service publishes one signed claim when it
//! starts, on the lease topic, and reads everyone's: the newest start wins, the others stop
//! acting. Claims are signed with the command signing key (twins share it, as agents trust it),
//! so nobody who can merely write to Kafka can fence cordon.
//!
//! "Newest" is not a matter of clocks: a service that started while its wall clock was ahead
//! would otherwise fence its own restarts (found by the chaos soak). Before claiming, a service
//! reads the topic to its end and names, in its claim, the incarnation whose claim it read last
//! (`succeeds`): a claim fences the service it succeeds, and of two claims that succeed the same
//! one (twins started at once), the later on the topic wins. A replayed old claim succeeds an
//! older incarnation and fences nobody.

use serde::{Deserialize, Serialize};

use crate::{decode_signature, sign, Envelope, SigningKey, VerifyingKey, WIRE_VERSION};

/// A claim larger than this is not read (a real one is about 300 bytes).
pub const MAX_LEASE_BYTES: usize = 4096;

/// One service's claim to act for its `instance_id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lease {
    pub version: u32,
    /// Always `"lease"`: no other signed message reads as a claim, nor a claim as another.
    pub kind: String,
    pub instance_id: String,
    /// Random, per start of the service.
    pub incarnation: String,
    /// When it started, on its own clock: for people; the order of starts is `succeeds`.
    pub started_at_ms: i64,
    /// The incarnation whose claim this service read last before claiming (none: the topic had
    /// no claim for this `instance_id`).
    #[serde(default)]
    pub succeeds: Option<String>,
}

impl Lease {
    pub fn new(instance_id: &str, incarnation: &str, started_at_ms: i64, succeeds: Option<String>) -> Lease {
        Lease {
            version: WIRE_VERSION,
            kind: LEASE_KIND.to_owned(),
            instance_id: instance_id.to_owned(),
            incarnation: incarnation.to_owned(),
            started_at_ms,
            succeeds,
        }
    }

    /// Whether this claim, read at `offset` on the lease topic, fences `ours` (read back at
    /// `our_offset`, once it was): it succeeds ours, or it succeeds the same claim as ours and
    /// came later on the topic.
    pub fn fences(&self, offset: i64, ours: &Lease, our_offset: Option<i64>) -> bool {
        if self.instance_id != ours.instance_id || self.incarnation == ours.incarnation {
            return false;
        }
        self.succeeds.as_deref() == Some(ours.incarnation.as_str())
            || (self.succeeds == ours.succeeds && our_offset.is_some_and(|our_offset| offset > our_offset))
    }
}

const LEASE_KIND: &str = "lease";

/// Why a message on the lease topic is not a claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LeaseRefusal {
    #[error("larger than a claim may be")]
    Oversized,
    #[error("not a signed envelope")]
    Malformed,
    #[error("the signature does not verify with cordon's signing key")]
    BadSignature,
    #[error("the signed payload is not a claim")]
    InvalidContent,
}

/// Signs `lease` into envelope bytes.
pub fn seal_lease(lease: &Lease, key: &SigningKey) -> Vec<u8> {
    let payload = serde_json::to_string(lease).expect("a lease always serializes");
    let signature = sign(&payload, key);
    serde_json::to_vec(&Envelope { payload, signature, signer: None }).expect("an envelope always serializes")
}

/// The claim in `bytes`, only if it is signed by `key` and well-formed.
pub fn open_lease(bytes: &[u8], key: &VerifyingKey) -> Result<Lease, LeaseRefusal> {
    if bytes.len() > MAX_LEASE_BYTES {
        return Err(LeaseRefusal::Oversized);
    }
    let envelope: Envelope = serde_json::from_slice(bytes).map_err(|_| LeaseRefusal::Malformed)?;
    let signature = decode_signature(&envelope.signature).ok_or(LeaseRefusal::BadSignature)?;
    key.verify_strict(envelope.payload.as_bytes(), &signature).map_err(|_| LeaseRefusal::BadSignature)?;
    let lease: Lease = serde_json::from_str(&envelope.payload).map_err(|_| LeaseRefusal::InvalidContent)?;
    if lease.kind != LEASE_KIND || lease.version != WIRE_VERSION {
        return Err(LeaseRefusal::InvalidContent);
    }
    Ok(lease)
}

#[cfg(test)]
mod tests {
    use super::{open_lease, seal_lease, Lease, LeaseRefusal};

    #[test]
    fn a_claim_opens_only_with_cordons_key_and_is_no_command() {
        let key = crate::generate_signing_key();
        let lease = Lease::new("cordon-1", "ab12", 1_000, None);
        let sealed = seal_lease(&lease, &key);
        assert_eq!(open_lease(&sealed, &key.verifying_key()), Ok(lease));
        let stranger = crate::generate_signing_key();
        assert_eq!(open_lease(&sealed, &stranger.verifying_key()), Err(LeaseRefusal::BadSignature));
        // A claim is never a command, and a command never a claim.
        assert_eq!(crate::open(&sealed, &key.verifying_key()), Err(crate::Refusal::InvalidContent));
        let command = crate::Command {
            version: 1,
            command_id: "h-1".into(),
            host_id: "h".into(),
            generation: 1,
            issued_at_ms: 0,
            expires_at_ms: 1,
            action: crate::Action::Release { reason: "r".into() },
        };
        let sealed_command = crate::seal(&command, &key);
        assert_eq!(open_lease(&sealed_command, &key.verifying_key()), Err(LeaseRefusal::InvalidContent));
        assert_eq!(open_lease(&[b' '; 5000], &key.verifying_key()), Err(LeaseRefusal::Oversized));
        assert_eq!(open_lease(b"{}", &key.verifying_key()), Err(LeaseRefusal::Malformed));
    }

    #[test]
    fn a_claim_fences_the_start_it_succeeds_whatever_the_clocks_say() {
        let first = Lease::new("c", "aa", 1_000, None);
        let second = Lease::new("c", "bb", 500, Some("aa".into()));
        assert!(second.fences(7, &first, Some(3)), "the next start fences the one it read, with its clock behind");
        assert!(!first.fences(9, &second, Some(7)), "the first claim, replayed later, fences nobody");
        // A start whose clock was far ahead, now dead: its restart succeeds it and is not fenced.
        let ahead = Lease::new("c", "cc", i64::MAX / 2, Some("bb".into()));
        let restart = Lease::new("c", "dd", 2_000, Some("cc".into()));
        assert!(!ahead.fences(11, &restart, Some(12)) && restart.fences(12, &ahead, Some(11)));
        // Twins that read the same claim: the later on the topic wins, before and after.
        let twin = Lease::new("c", "ee", 2_000, Some("cc".into()));
        assert!(twin.fences(13, &restart, Some(12)) && !restart.fences(12, &twin, Some(13)));
        assert!(!twin.fences(13, &restart, None), "before its own claim is read back, an earlier one waits");
        // Another instance_id, or one's own claim read again: never.
        assert!(!Lease::new("other", "ff", 0, Some("dd".into())).fences(20, &restart, Some(12)));
        assert!(!restart.fences(21, &restart, Some(12)));
    }
}
