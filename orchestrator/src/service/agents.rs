//! The registry of agents: which Ed25519 key speaks for which host, and the judgment of every
//! status report against it. Pure: the store keeps the records, the loop supplies the time.
//!
//! A report is applied only when its signature verifies with the key an operator enrolled for
//! the host (`cordon agents enroll`), its payload names the host of its Kafka key, it is newer
//! than the last report applied for the host, and it was not sent in cordon's future (beyond the
//! allowed skew). A key cordon has not enrolled is never trusted: it is kept as a *claim* that
//! an operator can accept once they have checked it on the host.

use cordon_wire::{ReportRefusal, SignedReport};
use serde::{Deserialize, Serialize};

/// How far in cordon's future a report's `sent_at_ms` may be: clocks drift, but a report from
/// further ahead would make every later, honest report look replayed.
pub const MAX_CLOCK_AHEAD_MS: i64 = 5 * 60 * 1_000;

/// The most hosts with a claimed key held at once: anyone who can write to the status topic
/// can claim hosts, and must not be able to fill the store doing it.
pub const MAX_CLAIMS: usize = 10_000;

/// Whether a host's enrolled key is trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentState {
    Enrolled,
    /// Reports signed with the key are refused; so are reports signed with any other key until
    /// an operator enrolls one.
    Revoked,
}

/// An operator's decision about a host's agent key (written by the API only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentRecord {
    pub host: String,
    pub state: AgentState,
    /// Base64 of the Ed25519 public key.
    pub key: String,
    pub changed_at_ms: i64,
    /// `operator NAME (ADDRESS)`.
    pub changed_by: String,
    pub reason: String,
}

/// A key that signed reports for a host without being its enrolled key (written by the loop
/// only): a new agent waiting for enrolment, a rotated key, or a forger.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claim {
    pub host: String,
    /// The latest key that claimed the host.
    pub key: String,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    /// How many different keys have claimed the host: more than one means someone else is
    /// signing reports for it too (check the key on the host before accepting it).
    pub keys_seen: u32,
    /// Why its reports are refused (`unknown_agent`, `wrong_key` or `revoked_agent`).
    pub refusal: ReportRefusal,
}

impl Claim {
    /// The claim after another report signed by `key`, or `None` when nothing worth writing
    /// changed (the same key again within a minute).
    pub fn noted(
        previous: Option<&Claim>,
        host: &str,
        key: &str,
        refusal: ReportRefusal,
        now: i64,
    ) -> Option<Claim> {
        match previous {
            None => Some(Claim {
                host: host.to_owned(),
                key: key.to_owned(),
                first_seen_ms: now,
                last_seen_ms: now,
                keys_seen: 1,
                refusal,
            }),
            Some(claim)
                if claim.key == key && claim.refusal == refusal && now - claim.last_seen_ms < 60_000 =>
            {
                None
            }
            Some(claim) => Some(Claim {
                key: key.to_owned(),
                last_seen_ms: now,
                keys_seen: if claim.key == key { claim.keys_seen } else { claim.keys_seen.saturating_add(1) },
                refusal,
                ..claim.clone()
            }),
        }
    }
}

/// Decides whether `report`, read from the status topic under `kafka_key`, may be applied to a
/// host whose enrolled key is `enrolled` and whose last applied report was sent at
/// `last_sent_at_ms`.
pub fn judge(
    report: &SignedReport,
    kafka_key: Option<&[u8]>,
    enrolled: Option<&AgentRecord>,
    last_sent_at_ms: Option<i64>,
    now: i64,
) -> Result<(), ReportRefusal> {
    let Some(enrolled) = enrolled else { return Err(ReportRefusal::UnknownAgent) };
    if enrolled.state == AgentState::Revoked {
        return Err(ReportRefusal::RevokedAgent);
    }
    if report.signer_text() != enrolled.key {
        return Err(ReportRefusal::WrongKey);
    }
    // The enrolled key is this host's: signed by it, the payload must name this host, and so
    // must the Kafka key (which decides the partition and what a compacted topic keeps).
    if report.status.host_id != enrolled.host || kafka_key != Some(enrolled.host.as_bytes()) {
        return Err(ReportRefusal::WrongHost);
    }
    if last_sent_at_ms.is_some_and(|last| report.status.sent_at_ms <= last) {
        return Err(ReportRefusal::Replayed);
    }
    if report.status.sent_at_ms > now.saturating_add(MAX_CLOCK_AHEAD_MS) {
        return Err(ReportRefusal::FromTheFuture);
    }
    Ok(())
}

/// The most hosts whose refused reports are remembered as said (see `OncePerMinute`).
pub const MAX_REFUSAL_NOTES: usize = 10_000;

/// The most refused reports logged one by one a minute, over all hosts; the rest are summed up.
pub const MAX_REFUSAL_LINES_PER_MINUTE: u32 = 60;

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_800_000_000_000;

    fn status(host: &str, sent_at_ms: i64) -> cordon_wire::Status {
        let mut status: cordon_wire::Status =
            serde_json::from_str(include_str!("../../../schemas/examples/status.json")).unwrap();
        status.host_id = host.into();
        status.sent_at_ms = sent_at_ms;
        status
    }

    fn signed(key: &cordon_wire::SigningKey, host: &str, sent_at_ms: i64) -> SignedReport {
        cordon_wire::open_report(&cordon_wire::seal_report(&status(host, sent_at_ms), key)).unwrap()
    }

    fn enrolled(host: &str, key: &cordon_wire::SigningKey) -> AgentRecord {
        AgentRecord {
            host: host.into(),
            state: AgentState::Enrolled,
            key: cordon_wire::key_to_base64(key.verifying_key().as_bytes()),
            changed_at_ms: T0,
            changed_by: "operator alice".into(),
            reason: "enrolled".into(),
        }
    }

    #[test]
    fn only_the_enrolled_key_for_this_host_newer_and_not_ahead_is_applied() {
        let (web, db) = (cordon_wire::generate_signing_key(), cordon_wire::generate_signing_key());
        let web_record = enrolled("web-01", &web);
        let key = Some(b"web-01".as_slice());
        let judged =
            |report: &SignedReport, kafka_key, record, last| judge(report, kafka_key, record, last, T0);
        assert_eq!(judged(&signed(&web, "web-01", T0), key, Some(&web_record), None), Ok(()));
        assert_eq!(judged(&signed(&web, "web-01", T0), key, Some(&web_record), Some(T0 - 1)), Ok(()));
        assert_eq!(judged(&signed(&web, "web-01", T0), key, None, None), Err(ReportRefusal::UnknownAgent));
        // Another host's genuine key, speaking for this one.
        assert_eq!(
            judged(&signed(&db, "web-01", T0), key, Some(&web_record), None),
            Err(ReportRefusal::WrongKey)
        );
        // This host's key, naming another host in the payload or in the Kafka key.
        assert_eq!(
            judged(&signed(&web, "db-01", T0), key, Some(&web_record), None),
            Err(ReportRefusal::WrongHost)
        );
        assert_eq!(
            judged(&signed(&web, "web-01", T0), Some(b"db-01"), Some(&web_record), None),
            Err(ReportRefusal::WrongHost)
        );
        assert_eq!(
            judged(&signed(&web, "web-01", T0), None, Some(&web_record), None),
            Err(ReportRefusal::WrongHost)
        );
        // The same report again, and an older one.
        assert_eq!(
            judged(&signed(&web, "web-01", T0), key, Some(&web_record), Some(T0)),
            Err(ReportRefusal::Replayed)
        );
        assert_eq!(
            judged(&signed(&web, "web-01", T0 - 5), key, Some(&web_record), Some(T0)),
            Err(ReportRefusal::Replayed)
        );
        assert_eq!(
            judged(&signed(&web, "web-01", T0 + MAX_CLOCK_AHEAD_MS + 1), key, Some(&web_record), None),
            Err(ReportRefusal::FromTheFuture)
        );
        let revoked = AgentRecord { state: AgentState::Revoked, ..web_record.clone() };
        assert_eq!(
            judged(&signed(&web, "web-01", T0), key, Some(&revoked), None),
            Err(ReportRefusal::RevokedAgent)
        );
    }

    #[test]
    fn claims_are_written_when_they_change_and_count_distinct_keys() {
        let first = Claim::noted(None, "h", "k1", ReportRefusal::UnknownAgent, T0).unwrap();
        assert_eq!((first.keys_seen, first.first_seen_ms), (1, T0));
        assert_eq!(Claim::noted(Some(&first), "h", "k1", ReportRefusal::UnknownAgent, T0 + 1_000), None);
        let later = Claim::noted(Some(&first), "h", "k1", ReportRefusal::UnknownAgent, T0 + 61_000).unwrap();
        assert_eq!((later.keys_seen, later.last_seen_ms), (1, T0 + 61_000));
        let other = Claim::noted(Some(&later), "h", "k2", ReportRefusal::UnknownAgent, T0 + 62_000).unwrap();
        assert_eq!((other.key.as_str(), other.keys_seen, other.first_seen_ms), ("k2", 2, T0));
    }
}
