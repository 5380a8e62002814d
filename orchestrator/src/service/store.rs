//! The service's durable state in sled: one record per host, the deadline index the scheduler
//! scans, the rules engine's state, the audit trail, and the outbox of signed commands.
//!
//! Commands are written to the outbox in the same flush as the state change that causes them,
//! and sent (then removed) only after that flush: a crash at any moment loses no command, and a
//! command sent twice is refused by the agent as a stale generation.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

pub use super::lifecycle::{AuditEntry, HostRecord, HostState};

/// A sealed command waiting to be sent, stored as the host's length (2 bytes, big-endian), the
/// host, and the envelope's bytes as they go on the wire: nothing to encode or decode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxEntry {
    pub host: String,
    /// Sealed command envelope.
    pub envelope: Vec<u8>,
}

impl OutboxEntry {
    fn to_bytes(&self) -> Result<Vec<u8>> {
        let length = u16::try_from(self.host.len()).context("a host id longer than 65,535 bytes")?;
        let mut bytes = Vec::with_capacity(2 + self.host.len() + self.envelope.len());
        bytes.extend_from_slice(&length.to_be_bytes());
        bytes.extend_from_slice(self.host.as_bytes());
        bytes.extend_from_slice(&self.envelope);
        Ok(bytes)
    }

    fn from_bytes(bytes: &[u8]) -> Result<OutboxEntry> {
        let unreadable = || anyhow::anyhow!("an outbox entry is unreadable");
        let length = usize::from(u16::from_be_bytes(bytes.get(..2).ok_or_else(unreadable)?.try_into()?));
        let host = bytes.get(2..2 + length).ok_or_else(unreadable)?;
        Ok(OutboxEntry {
            host: String::from_utf8(host.to_vec()).map_err(|_| unreadable())?,
            envelope: bytes[2 + length..].to_vec(),
        })
    }
}

/// One call to the operator API, kept whatever its outcome.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApiCall {
    pub at_ms: i64,
    /// `operator NAME (ADDRESS)`; `anonymous (ADDRESS)` for calls without a valid token.
    pub caller: String,
    pub method: String,
    pub path: String,
    pub status: u16,
}

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    /// Every host's tags, read once from its record and kept in step by `put_host`: the rules
    /// engine needs them for every detection, and decoding the record each time is most of
    /// the cost of a detection that decides nothing.
    tags: Arc<Mutex<HashMap<String, Vec<String>>>>,
    hosts: sled::Tree,
    deadlines: sled::Tree,
    /// Keyed by host, then a sequence number: one host's trail is one range.
    audit: sled::Tree,
    outbox: sled::Tree,
    api_calls: sled::Tree,
    /// How many hosts are in each state and how many agents are stale, kept in step by
    /// `put_host` (in memory, and in sled so that a restart need not read every record).
    counts: Arc<Mutex<HostCounts>>,
    counts_tree: sled::Tree,
}

/// Hosts by state, and stale agents: what the fleet gauges show.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostCounts {
    pub by_state: BTreeMap<&'static str, i64>,
    pub stale_agents: i64,
}

const STALE_KEY: &str = "stale_agents";

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
        let store = Store {
            hosts: db.open_tree("hosts")?,
            deadlines: db.open_tree("deadlines")?,
            audit: db.open_tree("audit")?,
            outbox: db.open_tree("outbox")?,
            api_calls: db.open_tree("api_calls")?,
            tags: Arc::default(),
            counts: Arc::default(),
            counts_tree: db.open_tree("counts")?,
            db,
        };
        store.load_counts()?;
        Ok(store)
    }

    /// Reads the kept counts; a store written before they were kept is counted once.
    fn load_counts(&self) -> Result<()> {
        let mut counts = HostCounts::default();
        if self.counts_tree.is_empty() && !self.hosts.is_empty() {
            for record in self.hosts()? {
                *counts.by_state.entry(record.state.name()).or_default() += 1;
                counts.stale_agents += i64::from(record.agent_stale);
            }
            for (name, count) in &counts.by_state {
                self.counts_tree.insert(name.as_bytes(), &count.to_be_bytes())?;
            }
            self.counts_tree.insert(STALE_KEY.as_bytes(), &counts.stale_agents.to_be_bytes())?;
        } else {
            for item in &self.counts_tree {
                let (key, value) = item?;
                let value = value.as_ref().try_into().map_or(0, i64::from_be_bytes);
                if key.as_ref() == STALE_KEY.as_bytes() {
                    counts.stale_agents = value;
                } else if let Some(state) =
                    HostState::ALL.iter().find(|s| s.name().as_bytes() == key.as_ref())
                {
                    counts.by_state.insert(state.name(), value);
                }
            }
        }
        *self.counts.lock().unwrap_or_else(PoisonError::into_inner) = counts;
        Ok(())
    }

    /// Whether the store answers reads (for `/readyz`).
    pub fn readable(&self) -> Result<()> {
        self.hosts.first().context("the state store does not answer reads")?;
        Ok(())
    }

    /// Hosts by state and stale agents, now.
    pub fn counts(&self) -> HostCounts {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn count_change(&self, previous: Option<&HostRecord>, record: &HostRecord) -> Result<()> {
        let was = previous.map(|p| (p.state, p.agent_stale));
        if was == Some((record.state, record.agent_stale)) {
            return Ok(());
        }
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let mut changed: Vec<(&'static str, i64)> = Vec::with_capacity(3);
        let mut shift = |name: &'static str, delta: i64, counts: &mut HostCounts| {
            let value = if name == STALE_KEY {
                counts.stale_agents += delta;
                counts.stale_agents
            } else {
                let entry = counts.by_state.entry(name).or_default();
                *entry += delta;
                *entry
            };
            changed.push((name, value));
        };
        if was.map(|(state, _)| state) != Some(record.state) {
            if let Some((state, _)) = was {
                shift(state.name(), -1, &mut counts);
            }
            shift(record.state.name(), 1, &mut counts);
        }
        let stale_before = was.is_some_and(|(_, stale)| stale);
        if stale_before != record.agent_stale {
            shift(STALE_KEY, if record.agent_stale { 1 } else { -1 }, &mut counts);
        }
        drop(counts);
        for (name, value) in changed {
            self.counts_tree.insert(name.as_bytes(), &value.to_be_bytes())?;
        }
        Ok(())
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

    /// The tags of `host` (none for a host cordon does not know).
    pub fn tags_of(&self, host: &str) -> Result<Vec<String>> {
        if let Some(tags) = self.tags.lock().unwrap_or_else(PoisonError::into_inner).get(host) {
            return Ok(tags.clone());
        }
        let tags = self.host(host)?.map(|record| record.tags).unwrap_or_default();
        self.tags.lock().unwrap_or_else(PoisonError::into_inner).insert(host.to_owned(), tags.clone());
        Ok(tags)
    }

    /// Stores `record` and keeps the deadline index in step with it. Not durable until `flush`.
    pub fn put_host(&self, previous: Option<&HostRecord>, record: &HostRecord) -> Result<()> {
        self.tags
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(record.host.clone(), record.tags.clone());
        if let Some(deadline) = previous.and_then(|p| p.expires_at_ms) {
            self.deadlines.remove(deadline_key(deadline, &record.host))?;
        }
        if let (Some(deadline), HostState::Isolating | HostState::Isolated) =
            (record.expires_at_ms, record.state)
        {
            self.deadlines.insert(deadline_key(deadline, &record.host), record.host.as_bytes())?;
        }
        self.hosts.insert(record.host.as_bytes(), serde_json::to_vec(record)?)?;
        self.count_change(previous, record)
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
        let mut key = entry.host.as_bytes().to_vec();
        key.push(0);
        key.extend_from_slice(&id.to_be_bytes());
        self.audit.insert(key, serde_json::to_vec(entry)?)?;
        Ok(())
    }

    /// A host's audit trail, oldest first.
    pub fn audit_of(&self, host: &str) -> Result<Vec<AuditEntry>> {
        let mut prefix = host.as_bytes().to_vec();
        prefix.push(0);
        self.audit
            .scan_prefix(prefix)
            .values()
            .map(|value| serde_json::from_slice(&value?).context("an audit entry is unreadable"))
            .collect()
    }

    pub fn record_api_call(&self, call: &ApiCall) -> Result<()> {
        let id = self.db.generate_id()?;
        self.api_calls.insert(id.to_be_bytes(), serde_json::to_vec(call)?)?;
        Ok(())
    }

    /// Every API call, oldest first.
    pub fn api_calls(&self) -> Result<Vec<ApiCall>> {
        self.api_calls
            .iter()
            .values()
            .map(|value| serde_json::from_slice(&value?).context("an API call record is unreadable"))
            .collect()
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

    /// Returns the entry's key (the order it goes out in).
    pub fn enqueue(&self, entry: &OutboxEntry) -> Result<[u8; 8]> {
        let key = self.db.generate_id()?.to_be_bytes();
        self.outbox.insert(key, entry.to_bytes()?)?;
        Ok(key)
    }

    /// Outbox entries, oldest first, with their keys for removal.
    pub fn outbox(&self) -> Result<Vec<(sled::IVec, OutboxEntry)>> {
        self.outbox
            .iter()
            .map(|item| {
                let (key, value) = item?;
                Ok((key, OutboxEntry::from_bytes(&value)?))
            })
            .collect()
    }

    /// Removes sent entries. Not flushed: an entry sent again after a crash is refused by its
    /// agent as a stale generation.
    pub fn sent(&self, key: &sled::IVec) -> Result<()> {
        self.outbox.remove(key)?;
        Ok(())
    }

    /// Makes everything written so far durable.
    pub fn flush(&self) -> Result<()> {
        self.db.flush().context("cannot flush the state store")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::OutboxEntry;

    #[test]
    fn outbox_entries_round_trip_and_refuse_truncation() {
        let entry =
            OutboxEntry { host: "web-01".into(), envelope: br#"{"payload":"{}","signature":"x"}"#.to_vec() };
        let bytes = entry.to_bytes().unwrap();
        assert_eq!(OutboxEntry::from_bytes(&bytes).unwrap(), entry);
        assert!(OutboxEntry::from_bytes(&bytes[..5]).is_err());
        assert!(OutboxEntry::from_bytes(&[0]).is_err());
    }
}
