//! The service's durable state in sled: one record per host, the deadline index the scheduler
//! scans, the rules engine's state, the audit trail, and the outbox of signed commands.
//!
//! Commands are written to the outbox in the same flush as the state change that causes them,
//! and sent (then removed) only after that flush: a crash at any moment loses no command, and a
//! command sent twice is refused by the agent as a stale generation.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// Where a host is in its isolation life cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostState {
    NotIsolated,
    PendingApproval,
    /// A command was issued; the agent has not confirmed it yet.
    Isolating,
    /// The agent confirmed.
    Isolated,
    /// A release was issued; the agent has not confirmed it yet.
    Releasing,
    Released,
}

/// The tag a host carries while isolated or being isolated.
pub const ISOLATED_TAG: &str = "ISOLATED FROM NETWORK";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    pub host: String,
    pub state: HostState,
    /// The generation of the last command issued to this host.
    pub generation: u64,
    /// `automatic` or `manual` while isolated.
    pub mode: Option<String>,
    pub expires_at_ms: Option<i64>,
    pub rules: Vec<String>,
    pub event_id: Option<String>,
    pub tags: Vec<String>,
    pub last_status: Option<cordon_wire::Status>,
    pub updated_at_ms: i64,
}

impl HostRecord {
    pub fn new(host: &str, now_ms: i64) -> HostRecord {
        HostRecord {
            host: host.to_owned(),
            state: HostState::NotIsolated,
            generation: 0,
            mode: None,
            expires_at_ms: None,
            rules: Vec::new(),
            event_id: None,
            tags: Vec::new(),
            last_status: None,
            updated_at_ms: now_ms,
        }
    }

    /// Adds or removes the isolation tag to match the state.
    pub fn retag(&mut self) {
        let isolated =
            matches!(self.state, HostState::Isolating | HostState::Isolated | HostState::Releasing);
        self.tags.retain(|t| t != ISOLATED_TAG);
        if isolated {
            self.tags.push(ISOLATED_TAG.to_owned());
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at_ms: i64,
    pub host: String,
    pub from: HostState,
    pub to: HostState,
    /// A rule id list, an operator, `scheduler` or `agent`.
    pub by: String,
    pub event_id: Option<String>,
    pub why: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub host: String,
    /// Sealed command envelope.
    pub envelope: Vec<u8>,
}

pub struct Store {
    db: sled::Db,
    hosts: sled::Tree,
    deadlines: sled::Tree,
    audit: sled::Tree,
    outbox: sled::Tree,
}

const ENGINE_KEY: &[u8] = b"engine";

fn deadline_key(expires_at_ms: i64, host: &str) -> Vec<u8> {
    let mut key = expires_at_ms.to_be_bytes().to_vec();
    key.extend_from_slice(host.as_bytes());
    key
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create state directory {}", dir.display()))?;
        let path = dir.join("orchestrator.sled");
        let db = sled::open(&path).with_context(|| format!("cannot open state store {}", path.display()))?;
        Ok(Store {
            hosts: db.open_tree("hosts")?,
            deadlines: db.open_tree("deadlines")?,
            audit: db.open_tree("audit")?,
            outbox: db.open_tree("outbox")?,
            db,
        })
    }

    pub fn host(&self, host: &str) -> Result<Option<HostRecord>> {
        let Some(bytes) = self.hosts.get(host.as_bytes())? else { return Ok(None) };
        Ok(Some(
            serde_json::from_slice(&bytes)
                .with_context(|| format!("the record of host {host} is unreadable"))?,
        ))
    }

    pub fn hosts(&self) -> Result<Vec<HostRecord>> {
        self.hosts
            .iter()
            .values()
            .map(|value| serde_json::from_slice(&value?).context("a host record is unreadable"))
            .collect()
    }

    /// Stores `record` and keeps the deadline index in step with it. Not durable until `flush`.
    pub fn put_host(&self, previous: Option<&HostRecord>, record: &HostRecord) -> Result<()> {
        if let Some(deadline) = previous.and_then(|p| p.expires_at_ms) {
            self.deadlines.remove(deadline_key(deadline, &record.host))?;
        }
        if let (Some(deadline), HostState::Isolating | HostState::Isolated) =
            (record.expires_at_ms, record.state)
        {
            self.deadlines.insert(deadline_key(deadline, &record.host), record.host.as_bytes())?;
        }
        self.hosts.insert(record.host.as_bytes(), serde_json::to_vec(record)?)?;
        Ok(())
    }

    /// Hosts whose deadline is at or before `now_ms`, earliest first.
    pub fn due(&self, now_ms: i64) -> Result<Vec<String>> {
        let end = deadline_key(now_ms.saturating_add(1), "");
        self.deadlines
            .range(..end)
            .values()
            .map(|value| Ok(String::from_utf8_lossy(&value?).into_owned()))
            .collect()
    }

    /// The next deadline, if any.
    pub fn next_deadline(&self) -> Result<Option<i64>> {
        Ok(self.deadlines.first()?.and_then(|(key, _)| key.get(..8)?.try_into().ok().map(i64::from_be_bytes)))
    }

    pub fn audit(&self, entry: &AuditEntry) -> Result<()> {
        let id = self.db.generate_id()?;
        self.audit.insert(id.to_be_bytes(), serde_json::to_vec(entry)?)?;
        Ok(())
    }

    pub fn audit_of(&self, host: &str) -> Result<Vec<AuditEntry>> {
        Ok(self
            .audit
            .iter()
            .values()
            .filter_map(|v| serde_json::from_slice::<AuditEntry>(&v.ok()?).ok())
            .filter(|entry| entry.host == host)
            .collect())
    }

    pub fn engine_state(&self) -> Result<rules::EngineState> {
        match self.db.get(ENGINE_KEY)? {
            Some(bytes) => {
                serde_json::from_slice(&bytes).context("the stored rules engine state is unreadable")
            }
            None => Ok(rules::EngineState::default()),
        }
    }

    pub fn put_engine_state(&self, state: &rules::EngineState) -> Result<()> {
        self.db.insert(ENGINE_KEY, serde_json::to_vec(state)?)?;
        Ok(())
    }

    pub fn enqueue(&self, entry: &OutboxEntry) -> Result<()> {
        let id = self.db.generate_id()?;
        self.outbox.insert(id.to_be_bytes(), serde_json::to_vec(entry)?)?;
        Ok(())
    }

    /// Outbox entries, oldest first, with their keys for removal.
    pub fn outbox(&self) -> Result<Vec<(sled::IVec, OutboxEntry)>> {
        self.outbox
            .iter()
            .map(|item| {
                let (key, value) = item?;
                Ok((key, serde_json::from_slice(&value).context("an outbox entry is unreadable")?))
            })
            .collect()
    }

    pub fn sent(&self, key: &sled::IVec) -> Result<()> {
        self.outbox.remove(key)?;
        self.db.flush().context("cannot flush the state store")?;
        Ok(())
    }

    /// Makes everything written so far durable.
    pub fn flush(&self) -> Result<()> {
        self.db.flush().context("cannot flush the state store")?;
        Ok(())
    }
}
