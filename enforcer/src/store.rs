//! The agent's durable state in sled: the isolation in force (so it can be restored after a
//! reboot) and an append-only audit trail of every change.
//!
//! The database is opened for each operation and closed after it: sled takes an exclusive lock,
//! and the command line must work while the agent runs. Opening retries while the other
//! process holds the lock.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cordon_wire::spec::Exclusion;
use serde::{Deserialize, Serialize};

const CURRENT_KEY: &[u8] = b"current";
const LAST_GENERATION_KEY: &[u8] = b"last_generation";
const RECORD_VERSION: u32 = 1;
const AUDIT_TREE: &str = "audit";

/// How the isolation ends (`cordon_wire`'s type: the record reads as it always did).
pub use cordon_wire::IsolationMode as Mode;

/// Everything needed to re-create an isolation from nothing (after a reboot).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IsolationRecord {
    pub version: u32,
    pub mode: Mode,
    pub started_at_unix_ms: i64,
    /// `None` for manual isolation.
    pub expires_at_unix_ms: Option<i64>,
    pub reason: Option<String>,
    /// As the user gave them (stored as canonical SPEC text).
    pub exclusions: Vec<Exclusion>,
    /// The agent's own channel, always allowed.
    pub management: Vec<Exclusion>,
    pub allowed_processes: Vec<String>,
    pub allow_dns: bool,
    pub allow_dhcp: bool,
    pub cgroup: PathBuf,
    pub interfaces: Vec<String>,
    /// The agent's own change sequence number: 1 for the first isolation, bumped by every change
    /// (the kernel holds it too, for `status`). Not cordon's command generation.
    #[serde(alias = "generation")]
    pub change_seq: u64,
}

impl IsolationRecord {
    pub fn new_version() -> u32 {
        RECORD_VERSION
    }

    pub fn overdue_at(&self, now_unix_ms: i64) -> bool {
        self.expires_at_unix_ms.is_some_and(|deadline| now_unix_ms >= deadline)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at_unix_ms: i64,
    /// `isolated`, `updated`, `released`, `expired`, `restored`, `adopted`, `failed`.
    pub event: String,
    pub actor: String,
    pub detail: String,
    /// The generation of the cordon command this carried out (none for the command line's own
    /// changes and the agent's restorations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_generation: Option<u64>,
    /// The deadline an automatic isolation was given (epoch milliseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_unix_ms: Option<i64>,
}

/// sled reports a lock held by another process as an I/O error whose message says so.
fn is_lock_held(error: &sled::Error) -> bool {
    matches!(error, sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock
        || io.to_string().contains("could not acquire lock"))
}

pub struct Store {
    db: sled::Db,
}

impl Store {
    /// Opens (creating if needed) the store under `state_dir`, waiting up to 10 s for a lock
    /// another cordon-enforcer process holds.
    pub fn open(state_dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("cannot create state directory {}", state_dir.display()))?;
        let path = state_dir.join("enforcer.sled");
        let started = Instant::now();
        loop {
            match sled::Config::new().path(&path).mode(sled::Mode::LowSpace).open() {
                Ok(db) => return Ok(Store { db }),
                Err(error) if is_lock_held(&error) && started.elapsed() < Duration::from_secs(10) => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(error) => {
                    let hint = if is_lock_held(&error) {
                        " (another cordon-enforcer process kept it locked for 10 s)"
                    } else {
                        ""
                    };
                    return Err(error)
                        .with_context(|| format!("cannot open state store {}{hint}", path.display()));
                }
            }
        }
    }

    pub fn current(&self) -> Result<Option<IsolationRecord>> {
        let Some(bytes) = self.db.get(CURRENT_KEY).context("cannot read the isolation record")? else {
            return Ok(None);
        };
        let record = serde_json::from_slice(&bytes).context("the stored isolation record is unreadable")?;
        Ok(Some(record))
    }

    /// Writes the isolation record and, when a command caused it, that command's generation, with
    /// the audit entry that says so, in one transaction: a crash can never leave the record of a
    /// command without its generation (which would let the same command, replayed, apply again),
    /// nor an isolation applied and recorded that the audit trail does not show.
    pub fn set_current(
        &self,
        record: &IsolationRecord,
        command_generation: Option<u64>,
        entry: Option<&AuditEntry>,
    ) -> Result<()> {
        let bytes = serde_json::to_vec(record).context("cannot encode the isolation record")?;
        self.write_current(Some(&bytes), command_generation, entry).context("cannot write the isolation record")
    }

    /// Removes the isolation record and, when a command caused it, records that command's
    /// generation, with its audit entry, in one transaction (see [`Store::set_current`]).
    pub fn clear_current(&self, command_generation: Option<u64>, entry: Option<&AuditEntry>) -> Result<()> {
        self.write_current(None, command_generation, entry).context("cannot remove the isolation record")
    }

    fn write_current(
        &self,
        current: Option<&[u8]>,
        command_generation: Option<u64>,
        entry: Option<&AuditEntry>,
    ) -> Result<()> {
        use sled::transaction::{ConflictableTransactionResult, TransactionError, Transactional as _};
        let audit = self.db.open_tree(AUDIT_TREE).context("cannot open the audit trail")?;
        let entry = entry.map(serde_json::to_vec).transpose().context("cannot encode the audit entry")?;
        let main: &sled::Tree = &self.db;
        (main, &audit)
            .transaction(|(main, audit)| -> ConflictableTransactionResult<(), ()> {
                match current {
                    Some(bytes) => main.insert(CURRENT_KEY, bytes)?,
                    None => main.remove(CURRENT_KEY)?,
                };
                if let Some(generation) = command_generation {
                    main.insert(LAST_GENERATION_KEY, generation.to_be_bytes().to_vec())?;
                }
                if let Some(entry) = &entry {
                    let id = main.generate_id()?;
                    audit.insert(id.to_be_bytes().to_vec(), entry.as_slice())?;
                }
                Ok(())
            })
            .map_err(|error| match error {
                TransactionError::Abort(()) => anyhow::anyhow!("the write was aborted"),
                TransactionError::Storage(error) => anyhow::Error::new(error),
            })?;
        self.db.flush().context("cannot flush the state store")?;
        Ok(())
    }

    /// The generation of the last command applied (0 when none was).
    pub fn last_command_generation(&self) -> Result<u64> {
        let bytes = self.db.get(LAST_GENERATION_KEY).context("cannot read the last generation")?;
        Ok(bytes.and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok()).map_or(0, u64::from_be_bytes))
    }

    pub fn audit(&self, entry: &AuditEntry) -> Result<()> {
        let audit = self.db.open_tree(AUDIT_TREE).context("cannot open the audit trail")?;
        let id = self.db.generate_id().context("cannot number the audit entry")?;
        audit
            .insert(id.to_be_bytes(), serde_json::to_vec(entry)?)
            .context("cannot append to the audit trail")?;
        self.db.flush().context("cannot flush the state store")?;
        Ok(())
    }

    /// The whole audit trail, oldest first (entries it cannot read are said, not skipped).
    pub fn audit_trail(&self) -> Result<Vec<AuditEntry>> {
        let audit = self.db.open_tree(AUDIT_TREE).context("cannot open the audit trail")?;
        audit
            .iter()
            .map(|item| {
                let (_, value) = item.context("cannot read the audit trail")?;
                serde_json::from_slice(&value).context("an audit entry is unreadable")
            })
            .collect()
    }

    /// The last `n` audit entries, oldest first.
    pub fn recent_audit(&self, n: usize) -> Result<Vec<AuditEntry>> {
        let audit = self.db.open_tree(AUDIT_TREE).context("cannot open the audit trail")?;
        let mut entries: Vec<AuditEntry> = audit
            .iter()
            .rev()
            .take(n)
            .filter_map(|item| item.ok().and_then(|(_, v)| serde_json::from_slice(&v).ok()))
            .collect();
        entries.reverse();
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::{AuditEntry, IsolationRecord, Mode, Store};

    #[test]
    fn a_command_generation_is_written_with_its_record_and_with_its_release() {
        let dir = std::env::temp_dir().join(format!("cordon-enforcer-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir).unwrap();
        let record = IsolationRecord {
            version: IsolationRecord::new_version(),
            mode: Mode::Manual,
            started_at_unix_ms: 1,
            expires_at_unix_ms: None,
            reason: None,
            exclusions: Vec::new(),
            management: Vec::new(),
            allowed_processes: Vec::new(),
            allow_dns: false,
            allow_dhcp: false,
            cgroup: "/sys/fs/cgroup".into(),
            interfaces: Vec::new(),
            change_seq: 1,
        };
        store.set_current(&record, Some(5), None).unwrap();
        assert_eq!((store.current().unwrap().is_some(), store.last_command_generation().unwrap()), (true, 5));
        // From the command line: the record changes, the commands' generation does not.
        store.set_current(&record, None, None).unwrap();
        assert_eq!(store.last_command_generation().unwrap(), 5);
        let released = AuditEntry {
            at_unix_ms: 2,
            event: "released".into(),
            actor: "cordon".into(),
            detail: String::new(),
            command_generation: Some(6),
            expires_at_unix_ms: None,
        };
        store.clear_current(Some(6), Some(&released)).unwrap();
        drop(store);
        let store = Store::open(&dir).unwrap();
        assert_eq!((store.current().unwrap().is_none(), store.last_command_generation().unwrap()), (true, 6));
        let trail = store.audit_trail().unwrap();
        assert_eq!(trail.len(), 1, "the release is in the audit trail with its record: {trail:?}");
        assert_eq!((trail[0].event.as_str(), trail[0].command_generation), ("released", Some(6)));
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_record_written_before_change_seq_was_named_so_reads_its_generation_as_change_seq() {
        let written_before = r#"{"version":2,"mode":"automatic","started_at_unix_ms":1,"expires_at_unix_ms":9,
            "reason":null,"exclusions":[],"management":[],"allowed_processes":[],"allow_dns":false,
            "allow_dhcp":false,"cgroup":"/sys/fs/cgroup","interfaces":[],"generation":4}"#;
        let record: IsolationRecord = serde_json::from_str(written_before).unwrap();
        assert_eq!((record.change_seq, record.mode), (4, Mode::Automatic));
        let written_now = serde_json::to_value(&record).unwrap();
        assert_eq!((written_now["change_seq"].as_u64(), written_now.get("generation")), (Some(4), None));
    }

    #[test]
    fn exclusions_are_kept_as_spec_text_and_read_back_parsed_once() {
        let stored = |exclusions: &str| {
            format!(
                r#"{{"version":2,"mode":"manual","started_at_unix_ms":1,"expires_at_unix_ms":null,"reason":null,
                "exclusions":{exclusions},"management":["out,tcp,192.0.2.9/32,9092"],"allowed_processes":[],
                "allow_dns":false,"allow_dhcp":false,"cgroup":"/sys/fs/cgroup","interfaces":[],"change_seq":1}}"#
            )
        };
        let record: IsolationRecord = serde_json::from_str(&stored(r#"["in,tcp,0.0.0.0/0,22"]"#)).unwrap();
        assert_eq!(record.exclusions, vec!["in,tcp,0.0.0.0/0,22".parse::<cordon_wire::spec::Exclusion>().unwrap()]);
        assert_eq!(record.management[0].to_string(), "out,tcp,192.0.2.9/32,9092");
        let written = serde_json::to_value(&record).unwrap();
        assert_eq!(written["exclusions"], serde_json::json!(["in,tcp,0.0.0.0/0,22"]), "the same text on disk");
        // A record whose SPEC does not parse (written by hand, or damaged) is refused, the SPEC named.
        let error = serde_json::from_str::<IsolationRecord>(&stored(r#"["in,tcp,10.0.0.1/8"]"#)).unwrap_err();
        assert!(error.to_string().contains("10.0.0.0/8"), "{error}");
    }
}
