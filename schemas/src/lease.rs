//! The lease: how a `cordon serve` tells its twins (another service started with the same
//! `instance_id`) that it is the active one. Each service publishes one signed claim when it
//! starts, on the lease topic, and reads everyone's: the newest start wins, the others stop
//! acting. Claims are signed with the command signing key (twins share it, as agents trust it),
//! so nobody who can merely write to Kafka can fence cordon; a replayed old claim is older than
//! the service it would fence and changes nothing.

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
    pub started_at_ms: i64,
}

impl Lease {
    pub fn new(instance_id: &str, incarnation: &str, started_at_ms: i64) -> Lease {
        Lease {
            version: WIRE_VERSION,
            kind: LEASE_KIND.to_owned(),
            instance_id: instance_id.to_owned(),
            incarnation: incarnation.to_owned(),
            started_at_ms,
        }
    }

    /// Whether this claim was made after `other` (later start; the incarnation breaks a tie).
    pub fn supersedes(&self, other: &Lease) -> bool {
        (self.started_at_ms, &self.incarnation) > (other.started_at_ms, &other.incarnation)
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
        let lease = Lease::new("cordon-1", "ab12", 1_000);
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
    fn the_later_start_supersedes_and_the_incarnation_breaks_a_tie() {
        let old = Lease::new("c", "aa", 1_000);
        let new = Lease::new("c", "bb", 2_000);
        assert!(new.supersedes(&old) && !old.supersedes(&new) && !old.supersedes(&old));
        let tie = Lease::new("c", "cc", 1_000);
        assert!(tie.supersedes(&old) && !old.supersedes(&tie));
    }
}
