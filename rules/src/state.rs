//! The engine's memory between events, a plain value the caller persists: recently seen event ids,
//! threshold windows, escalation counters, the hosts the engine has isolated, and the recent
//! automatic isolations counted by the ceiling. Rules are referred to by id, so state survives a reload.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::decision::IsolationMode;

/// How many (host, event id) pairs are remembered for deduplication. Older ones are forgotten
/// first; each costs 16 bytes (a 64-bit hash in a queue and a set), about 1 MiB in all.
pub const DEDUP_CAPACITY: usize = 65_536;

/// How many threshold groups (e.g. hosts, users) one rule counts at once; a new one beyond that
/// pushes out the groups whose window has passed, or else the one matched least recently.
pub const MAX_THRESHOLD_GROUPS: usize = 65_536;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineState {
    pub(crate) seen: SeenEvents,
    /// rule id -> group key -> match times.
    pub(crate) thresholds: HashMap<String, HashMap<String, ThresholdWindow>>,
    /// rule id -> host -> isolations counted for escalation.
    pub(crate) escalations: HashMap<String, HashMap<String, EscalationCount>>,
    /// host -> the isolation the engine decided and believes is in force.
    pub(crate) active: HashMap<String, ActiveIsolation>,
    /// Times of new engine-initiated isolations, for the `max_automatic` ceiling; newest last.
    pub(crate) recent_isolations: VecDeque<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "VecDeque<u64>", into = "VecDeque<u64>")]
pub(crate) struct SeenEvents {
    order: VecDeque<u64>,
    set: HashSet<u64>,
}

impl From<VecDeque<u64>> for SeenEvents {
    fn from(order: VecDeque<u64>) -> Self {
        let set = order.iter().copied().collect();
        Self { order, set }
    }
}

impl From<SeenEvents> for VecDeque<u64> {
    fn from(seen: SeenEvents) -> Self {
        seen.order
    }
}

impl SeenEvents {
    pub fn contains(&self, key: u64) -> bool {
        self.set.contains(&key)
    }

    pub fn insert(&mut self, key: u64) {
        if !self.set.insert(key) {
            return;
        }
        self.order.push_back(key);
        if self.order.len() > DEDUP_CAPACITY {
            if let Some(oldest) = self.order.pop_front() {
                self.set.remove(&oldest);
            }
        }
    }
}

/// A stable 64-bit FNV-1a hash of (host, event id): stable across builds, so persisted state stays valid.
pub(crate) fn event_key(host: &str, event_id: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;
    let mut hash = OFFSET;
    for byte in host.bytes().chain([0x1f]).chain(event_id.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(PRIME);
    }
    hash
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ThresholdWindow {
    /// Match times not yet consumed by a firing, at most `count - 1` of them; oldest first.
    pub hits: VecDeque<i64>,
    pub within_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct EscalationCount {
    pub isolations: u32,
    pub last_ms: i64,
    pub window_ms: i64,
}

impl EscalationCount {
    /// Isolations that still count at `now_ms`: the count resets after a window without one.
    pub fn current(&self, now_ms: i64) -> u32 {
        if now_ms.saturating_sub(self.last_ms) > self.window_ms {
            0
        } else {
            self.isolations
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ActiveIsolation {
    pub mode: IsolationMode,
    pub deadline_ms: Option<i64>,
    /// The rules that isolated the host, each with the duration (ms) it last applied; 0 for manual.
    pub rules: BTreeMap<String, i64>,
}

impl ActiveIsolation {
    pub fn in_force(&self, now_ms: i64) -> bool {
        self.mode == IsolationMode::Manual || self.deadline_ms.is_some_and(|deadline| deadline > now_ms)
    }
}

/// What the engine remembers of one host's isolation, taken before an event is evaluated so it
/// can be put back if handling that event fails afterwards (the host's record was not changed,
/// so the engine must not believe it was).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostIsolationMemory(Option<ActiveIsolation>);

impl EngineState {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    #[must_use]
    pub fn isolation_memory(&self, host: &str) -> HostIsolationMemory {
        HostIsolationMemory(self.active.get(host).cloned())
    }

    /// Puts back what [`EngineState::isolation_memory`] took for `host`.
    pub fn restore_isolation_memory(&mut self, host: &str, memory: HostIsolationMemory) {
        match memory.0 {
            Some(active) => {
                self.active.insert(host.to_owned(), active);
            }
            None => {
                self.active.remove(host);
            }
        }
    }

    /// Forgets the engine's isolation of `host`, e.g. after an operator released it; the next
    /// match isolates it anew rather than as a retrigger.
    pub fn release(&mut self, host: &str) {
        self.active.remove(host);
    }

    /// Records an isolation decided outside the engine (an operator's, or an approved proposal),
    /// so later matches on `host` are retriggers that never weaken it. `by` names who decided.
    pub fn note_isolation(&mut self, host: &str, mode: IsolationMode, deadline_ms: Option<i64>, by: &str) {
        let duration = match (mode, deadline_ms) {
            (IsolationMode::Automatic, Some(_)) => 1,
            _ => 0,
        };
        self.active.insert(
            host.to_owned(),
            ActiveIsolation { mode, deadline_ms, rules: BTreeMap::from([(by.to_owned(), duration)]) },
        );
    }

    /// The isolation the engine believes is in force on `host` at `now_ms`: its mode and deadline.
    #[must_use]
    pub fn isolation_of(&self, host: &str, now_ms: i64) -> Option<(IsolationMode, Option<i64>)> {
        self.active
            .get(host)
            .filter(|active| active.in_force(now_ms))
            .map(|active| (active.mode, active.deadline_ms))
    }

    /// Drops everything that no longer affects a decision at `now_ms`: expired isolations, match
    /// times outside their threshold window, escalation counts past their window, ceiling entries
    /// older than `ceiling_window_ms`. Call it periodically to keep the state small.
    pub fn prune(&mut self, now_ms: i64, ceiling_window_ms: i64) {
        self.active.retain(|_, active| active.in_force(now_ms));
        for groups in self.thresholds.values_mut() {
            for window in groups.values_mut() {
                let oldest = now_ms.saturating_sub(window.within_ms);
                window.hits.retain(|&at| at > oldest);
            }
            groups.retain(|_, window| !window.hits.is_empty());
        }
        self.thresholds.retain(|_, groups| !groups.is_empty());
        for hosts in self.escalations.values_mut() {
            hosts.retain(|_, count| count.current(now_ms) > 0);
        }
        self.escalations.retain(|_, hosts| !hosts.is_empty());
        let oldest = now_ms.saturating_sub(ceiling_window_ms);
        self.recent_isolations.retain(|&at| at > oldest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_forgets_the_oldest_beyond_its_capacity() {
        let mut seen = SeenEvents::default();
        for key in 0..=u64::try_from(DEDUP_CAPACITY).unwrap() {
            seen.insert(key);
        }
        assert!(!seen.contains(0));
        assert!(seen.contains(1));
        assert_eq!(seen.order.len(), DEDUP_CAPACITY);
    }

    #[test]
    fn state_round_trips_through_json() {
        let mut state = EngineState::new();
        state.seen.insert(event_key("ws-1", "e1"));
        state.recent_isolations.push_back(5);
        let json = serde_json::to_string(&state).unwrap();
        let back: EngineState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, state);
        assert!(back.seen.contains(event_key("ws-1", "e1")));
    }

    #[test]
    fn a_hosts_isolation_memory_is_put_back_as_it_was() {
        let mut state = EngineState::new();
        let before = state.isolation_memory("ws-1");
        state.note_isolation("ws-1", IsolationMode::Manual, None, "rules a");
        assert!(state.isolation_of("ws-1", 0).is_some());
        state.restore_isolation_memory("ws-1", before);
        assert!(state.isolation_of("ws-1", 0).is_none(), "what was not there is gone again");
        state.note_isolation("ws-2", IsolationMode::Automatic, Some(100), "rules a");
        let kept = state.isolation_memory("ws-2");
        state.release("ws-2");
        state.restore_isolation_memory("ws-2", kept);
        assert_eq!(state.isolation_of("ws-2", 0), Some((IsolationMode::Automatic, Some(100))));
    }

    #[test]
    fn event_keys_are_stable() {
        // FNV-1a 64 of b"ws-1\x1fe1", computed independently.
        assert_eq!(event_key("ws-1", "e1"), 0x35a7_1e45_6d26_bfe0);
        assert_ne!(event_key("ws-1", "e1"), event_key("ws-1e", "1"));
    }
}
