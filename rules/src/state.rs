//! The engine's memory between events, a plain value the caller persists: recently seen event ids,
//! threshold windows, escalation counters and the recent automatic isolations counted by the
//! ceiling. Rules are referred to by id, so state survives a reload. Whether a host is isolated is
//! not the engine's to remember: the caller, who owns the host, passes it in ([`HostIsolation`]);
//! [`HostIsolations`] keeps it where no one else does (rule tests, the command line).
//!
//! The caller persists it by changes: [`EngineState::take_changes`] gives the entries (key,
//! value or removal) of a key-value store that changed since the last call, and
//! [`EngineState::from_entries`] reads the state back from all of them. Writing the whole state
//! per batch would cost a megabyte (the deduplication window) each time.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::decision::{Action, Decision, IsolationMode};
use crate::engine::evaluate;
use crate::event::Event;
use crate::ruleset::Ruleset;

/// How many (host, event id) pairs are remembered for deduplication. Older ones are forgotten
/// first; each costs 16 bytes (a 64-bit hash in a queue and a set), about 1 MiB in all.
pub const DEDUP_CAPACITY: usize = 65_536;

/// How many threshold groups (e.g. hosts, users) one rule counts at once; a new one beyond that
/// pushes out the groups whose window has passed, or else the one matched least recently.
pub const MAX_THRESHOLD_GROUPS: usize = 65_536;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineState {
    /// What changed since the last [`EngineState::take_changes`] (not part of the state).
    #[serde(skip)]
    pub(crate) touched: Touched,
    pub(crate) seen: SeenEvents,
    /// rule id -> group key -> match times.
    pub(crate) thresholds: HashMap<String, HashMap<String, ThresholdWindow>>,
    /// rule id -> host -> isolations counted for escalation.
    pub(crate) escalations: HashMap<String, HashMap<String, EscalationCount>>,
    /// Hosts' isolations as earlier versions kept them here, read from an old store and
    /// handed once to the hosts' owner ([`EngineState::take_legacy_isolations`]); never written.
    #[serde(default, rename = "active", skip_serializing)]
    pub(crate) legacy_isolations: HashMap<String, HostIsolation>,
    /// Times of new engine-initiated isolations, for the `max_automatic` ceiling; newest last.
    pub(crate) recent_isolations: VecDeque<i64>,
}

/// The keys of the state that changed since the last [`EngineState::take_changes`]: each is
/// written as it is then (or removed if it is gone). Equal whatever it holds: it is bookkeeping,
/// not state.
#[derive(Debug, Clone, Default)]
pub(crate) struct Touched {
    /// Everything: the state did not come from entries (it was read whole, or is new).
    all: bool,
    pub(crate) thresholds: HashSet<(String, String)>,
    pub(crate) escalations: HashSet<(String, String)>,
    /// Entries of hosts' isolations written by earlier versions, to remove.
    legacy_isolations: HashSet<String>,
    pub(crate) recent: bool,
    /// Chunks ([`SEEN_CHUNK`] sequence numbers each) of seen events where one was added or
    /// forgotten: a chunk is one entry, so a batch of thousands of events writes a few entries.
    seen_chunks: std::collections::BTreeSet<u64>,
}

impl PartialEq for Touched {
    fn eq(&self, _: &Touched) -> bool {
        true
    }
}

/// Equal when they remember the same events in the same order (sequence numbers are how they are
/// stored, not what they remember).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(from = "VecDeque<u64>", into = "VecDeque<u64>")]
pub(crate) struct SeenEvents {
    order: VecDeque<u64>,
    set: HashSet<u64>,
    /// The sequence number the next key gets; the front of `order` has `next - order.len()`.
    next: u64,
}

impl PartialEq for SeenEvents {
    fn eq(&self, other: &SeenEvents) -> bool {
        self.order == other.order
    }
}

impl Eq for SeenEvents {}

impl From<VecDeque<u64>> for SeenEvents {
    fn from(order: VecDeque<u64>) -> Self {
        let set = order.iter().copied().collect();
        let next = order.len() as u64;
        Self { order, set, next }
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

    /// Remembers `key`; returns its sequence number and that of the key it pushed out, if any
    /// (`None` if it was known).
    pub fn insert(&mut self, key: u64) -> Option<(u64, Option<u64>)> {
        if !self.set.insert(key) {
            return None;
        }
        let sequence = self.next;
        self.next += 1;
        self.order.push_back(key);
        let mut dropped = None;
        if self.order.len() > DEDUP_CAPACITY {
            if let Some(oldest) = self.order.pop_front() {
                self.set.remove(&oldest);
                dropped = Some(sequence - DEDUP_CAPACITY as u64);
            }
        }
        Some((sequence, dropped))
    }

    /// The chunk's entry: its first remembered sequence number, then the keys from there on
    /// (big-endian u64s); `None` when the chunk holds nothing remembered.
    fn chunk(&self, chunk: u64) -> Option<Vec<u8>> {
        let front = self.next - self.order.len() as u64;
        let start = (chunk * SEEN_CHUNK).max(front);
        let end = ((chunk + 1) * SEEN_CHUNK).min(self.next);
        if start >= end {
            return None;
        }
        let mut value = Vec::with_capacity(8 * (1 + usize::try_from(end - start).unwrap_or(0)));
        value.extend_from_slice(&start.to_be_bytes());
        let (from, to) = (usize::try_from(start - front).ok()?, usize::try_from(end - front).ok()?);
        for key in self.order.range(from..to) {
            value.extend_from_slice(&key.to_be_bytes());
        }
        Some(value)
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

/// The isolation in force on a host, as the host's owner keeps it: what the engine judges a rule
/// matching again by (retrigger, escalation), what a weaker decision never overrides, and what
/// the ceiling on new isolations does not count. The engine keeps no copy: the caller passes it
/// to [`crate::evaluate`] and keeps what a decision returns ([`crate::Decision::isolated_by`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostIsolation {
    pub mode: IsolationMode,
    pub deadline_ms: Option<i64>,
    /// Who put it in force (rule ids, or whoever else decided, e.g. `operator NAME`), each with
    /// the duration (ms) it last applied; 0 when it applied none of its own.
    #[serde(alias = "rules")]
    pub isolated_by: BTreeMap<String, i64>,
}

impl HostIsolation {
    /// Whether it still holds at `now_ms`: manual, or its deadline is ahead.
    #[must_use]
    pub fn in_force(&self, now_ms: i64) -> bool {
        self.mode == IsolationMode::Manual || self.deadline_ms.is_some_and(|deadline| deadline > now_ms)
    }

    /// The isolation `decision` puts in force, if it isolates.
    #[must_use]
    pub fn decided(decision: &Decision) -> Option<HostIsolation> {
        match &decision.action {
            Action::Isolate(isolation) => Some(HostIsolation {
                mode: isolation.mode,
                deadline_ms: isolation.deadline_ms,
                isolated_by: decision.isolated_by.clone(),
            }),
            Action::RequestApproval(_) => None,
        }
    }
}

/// How many hosts [`HostIsolations`] keeps isolations for. Detections name any host id they
/// like: a flood of made-up ones matching a manual (never-ending) shadow rule must not grow it.
pub const MAX_KEPT_ISOLATIONS: usize = 65_536;

/// Hosts' isolations where no one else keeps them (replaying a rule's tests, `cordon rules`,
/// shadow rules, benchmarks): what the engine's decisions put in force, until they end, for at
/// most [`MAX_KEPT_ISOLATIONS`] hosts. Past that, ended ones go first, then as many others as
/// make room for an eighth more (whose next match then counts as new: shadow rules report more,
/// and act on nothing).
#[derive(Debug, Clone, Default)]
pub struct HostIsolations(HashMap<String, HostIsolation>);

impl HostIsolations {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The isolation in force on `host` at `now_ms`.
    #[must_use]
    pub fn in_force(&self, host: &str, now_ms: i64) -> Option<&HostIsolation> {
        self.0.get(host).filter(|isolation| isolation.in_force(now_ms))
    }

    /// Evaluates `event` against the host's isolation in force, and keeps what the decisions put
    /// in force (see [`crate::evaluate`]).
    pub fn evaluate<T: AsRef<str>>(
        &mut self,
        ruleset: &Ruleset,
        state: &mut EngineState,
        event: &Event,
        now_ms: i64,
        host_tags: &[T],
    ) -> Vec<Decision> {
        let decisions = evaluate(ruleset, state, event, self.in_force(event.host(), now_ms), now_ms, host_tags);
        for decision in &decisions {
            if let Some(isolation) = HostIsolation::decided(decision) {
                self.keep(&decision.host, isolation, now_ms);
            }
        }
        decisions
    }

    fn keep(&mut self, host: &str, isolation: HostIsolation, now_ms: i64) {
        if !self.0.contains_key(host) && self.0.len() >= MAX_KEPT_ISOLATIONS {
            self.prune(now_ms);
            // Room for at least an eighth more before the next pass: a flood of new hosts costs
            // one pass per eighth, not one per host, however few isolations had ended.
            let mut excess = self.0.len().saturating_sub(MAX_KEPT_ISOLATIONS - MAX_KEPT_ISOLATIONS / 8);
            self.0.retain(|_, _| {
                let keep = excess == 0;
                excess = excess.saturating_sub(1);
                keep
            });
        }
        self.0.insert(host.to_owned(), isolation);
    }

    /// How many hosts' isolations are kept.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Forgets `host`'s isolation (it was released).
    pub fn release(&mut self, host: &str) {
        self.0.remove(host);
    }

    /// Forgets the isolations that have ended by `now_ms`.
    pub fn prune(&mut self, now_ms: i64) {
        self.0.retain(|_, isolation| isolation.in_force(now_ms));
    }
}

impl EngineState {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Hosts' isolations kept here by earlier versions (read from their store), for the
    /// hosts' owner to adopt: given once, and their entries are removed by the next
    /// [`EngineState::take_changes`].
    pub fn take_legacy_isolations(&mut self) -> HashMap<String, HostIsolation> {
        let legacy = std::mem::take(&mut self.legacy_isolations);
        self.touched.legacy_isolations.extend(legacy.keys().cloned());
        legacy
    }

    /// Drops everything that no longer affects a decision at `now_ms`: match
    /// times outside their threshold window, escalation counts past their window, ceiling entries
    /// older than `ceiling_window_ms`. Call it periodically to keep the state small.
    pub fn prune(&mut self, now_ms: i64, ceiling_window_ms: i64) {
        let touched = &mut self.touched;
        for (rule, groups) in &mut self.thresholds {
            for (group, window) in groups.iter_mut() {
                let oldest = now_ms.saturating_sub(window.within_ms);
                let before = window.hits.len();
                window.hits.retain(|&at| at > oldest);
                if window.hits.len() != before {
                    touched.thresholds.insert((rule.clone(), group.clone()));
                }
            }
            groups.retain(|_, window| !window.hits.is_empty());
        }
        self.thresholds.retain(|_, groups| !groups.is_empty());
        for (rule, hosts) in &mut self.escalations {
            hosts.retain(|host, count| {
                let keep = count.current(now_ms) > 0;
                if !keep {
                    touched.escalations.insert((rule.clone(), host.clone()));
                }
                keep
            });
        }
        self.escalations.retain(|_, hosts| !hosts.is_empty());
        let oldest = now_ms.saturating_sub(ceiling_window_ms);
        let before = self.recent_isolations.len();
        self.recent_isolations.retain(|&at| at > oldest);
        touched.recent |= self.recent_isolations.len() != before;
    }

    /// Remembers the event `key` (host and event id); false if it was seen already.
    pub(crate) fn remember_event(&mut self, key: u64) -> bool {
        let Some((sequence, dropped)) = self.seen.insert(key) else { return false };
        self.touched.seen_chunks.insert(sequence / SEEN_CHUNK);
        if let Some(dropped) = dropped {
            self.touched.seen_chunks.insert(dropped / SEEN_CHUNK);
        }
        true
    }

    /// Counts the whole state as changed: the next [`EngineState::take_changes`] gives every
    /// entry (for a state read whole, from before it was persisted by changes).
    pub fn touch_all(&mut self) {
        self.touched.all = true;
    }

    /// The entries that changed since the last call (key, and the value or `None` for a
    /// removal), to write in one transaction with the changes they go with.
    pub fn take_changes(&mut self) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        let touched = std::mem::take(&mut self.touched);
        let mut changes = Vec::new();
        for host in &touched.legacy_isolations {
            changes.push((entry_key(LEGACY_ISOLATION, &[host]), None));
        }
        if touched.all {
            for (rule, groups) in &self.thresholds {
                for (group, window) in groups {
                    changes.push((entry_key(THRESHOLD, &[rule, group]), Some(to_json(window))));
                }
            }
            for (rule, hosts) in &self.escalations {
                for (host, count) in hosts {
                    changes.push((entry_key(ESCALATION, &[rule, host]), Some(to_json(count))));
                }
            }
            changes.push((vec![RECENT], Some(to_json(&self.recent_isolations))));
            let front = self.seen.next - self.seen.order.len() as u64;
            for chunk in front / SEEN_CHUNK..self.seen.next.div_ceil(SEEN_CHUNK) {
                if let Some(value) = self.seen.chunk(chunk) {
                    changes.push((seen_key(chunk), Some(value)));
                }
            }
            return changes;
        }
        for (rule, group) in &touched.thresholds {
            let value = self.thresholds.get(rule).and_then(|groups| groups.get(group)).map(to_json);
            changes.push((entry_key(THRESHOLD, &[rule, group]), value));
        }
        for (rule, host) in &touched.escalations {
            let value = self.escalations.get(rule).and_then(|hosts| hosts.get(host)).map(to_json);
            changes.push((entry_key(ESCALATION, &[rule, host]), value));
        }
        if touched.recent {
            changes.push((vec![RECENT], Some(to_json(&self.recent_isolations))));
        }
        for chunk in touched.seen_chunks {
            changes.push((seen_key(chunk), self.seen.chunk(chunk)));
        }
        changes
    }

    /// The state from every entry [`EngineState::take_changes`] gave (in any order).
    ///
    /// # Errors
    /// An entry that is not one of the state's, or whose value cannot be read, named.
    pub fn from_entries<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        entries: impl IntoIterator<Item = (K, V)>,
    ) -> Result<EngineState, String> {
        let mut state = EngineState::default();
        let mut seen: Vec<(u64, u64)> = Vec::new();
        for (key, value) in entries {
            let (key, value) = (key.as_ref(), value.as_ref());
            let unreadable = |what: &str| format!("the engine state's entry {} is unreadable ({what})", String::from_utf8_lossy(key));
            let Some((&kind, rest)) = key.split_first() else { return Err(unreadable("empty key")) };
            match kind {
                LEGACY_ISOLATION => {
                    let host = String::from_utf8(rest.to_vec()).map_err(|_| unreadable("host"))?;
                    state.legacy_isolations.insert(host, from_json(value).map_err(|e| unreadable(&e))?);
                }
                THRESHOLD | ESCALATION => {
                    let (first, second) = split_pair(rest).ok_or_else(|| unreadable("key"))?;
                    if kind == THRESHOLD {
                        let window = from_json(value).map_err(|e| unreadable(&e))?;
                        state.thresholds.entry(first).or_default().insert(second, window);
                    } else {
                        let count = from_json(value).map_err(|e| unreadable(&e))?;
                        state.escalations.entry(first).or_default().insert(second, count);
                    }
                }
                RECENT => state.recent_isolations = from_json(value).map_err(|e| unreadable(&e))?,
                SEEN => {
                    if rest.len() != 8 || value.len() < 16 || value.len() % 8 != 0 {
                        return Err(unreadable("seen events"));
                    }
                    let mut words = value.chunks_exact(8).map(|word| u64::from_be_bytes(word.try_into().unwrap_or_default()));
                    let first = words.next().unwrap_or_default();
                    seen.extend(words.enumerate().map(|(offset, event)| (first + offset as u64, event)));
                }
                _ => return Err(unreadable("unknown kind")),
            }
        }
        // The newest run of consecutive sequence numbers (all of them, when nothing is amiss).
        seen.sort_unstable();
        let mut start = seen.len();
        while start > 0 && (start == seen.len() || seen[start - 1].0 + 1 == seen[start].0) {
            start -= 1;
        }
        let run = &seen[start..];
        state.seen.next = run.last().map_or(0, |(sequence, _)| sequence + 1);
        for (_, event) in run {
            state.seen.order.push_back(*event);
            state.seen.set.insert(*event);
        }
        Ok(state)
    }
}

/// Written by earlier versions (hosts' isolations); read once, then removed.
const LEGACY_ISOLATION: u8 = b'a';
const THRESHOLD: u8 = b't';
const ESCALATION: u8 = b'e';
const RECENT: u8 = b'r';
const SEEN: u8 = b's';

/// `kind`, then each part but the last with its length (u32, big-endian), then the last part.
fn entry_key(kind: u8, parts: &[&str]) -> Vec<u8> {
    let mut key = vec![kind];
    for (index, part) in parts.iter().enumerate() {
        if index + 1 < parts.len() {
            key.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
        }
        key.extend_from_slice(part.as_bytes());
    }
    key
}

fn split_pair(rest: &[u8]) -> Option<(String, String)> {
    let length = usize::try_from(u32::from_be_bytes(rest.get(..4)?.try_into().ok()?)).ok()?;
    let first = rest.get(4..4 + length)?;
    let second = rest.get(4 + length..)?;
    Some((String::from_utf8(first.to_vec()).ok()?, String::from_utf8(second.to_vec()).ok()?))
}

/// How many sequence numbers of seen events one entry holds.
const SEEN_CHUNK: u64 = 1024;

fn seen_key(chunk: u64) -> Vec<u8> {
    let mut key = vec![SEEN];
    key.extend_from_slice(&chunk.to_be_bytes());
    key
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("the engine's state always serializes")
}

fn from_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_isolations_are_bounded_ended_ones_going_first() {
        let manual = HostIsolation { mode: IsolationMode::Manual, deadline_ms: None, isolated_by: BTreeMap::new() };
        let timed = |deadline_ms| HostIsolation { mode: IsolationMode::Automatic, deadline_ms: Some(deadline_ms), ..manual.clone() };
        let room = MAX_KEPT_ISOLATIONS - MAX_KEPT_ISOLATIONS / 8;
        let mut kept = HostIsolations::new();
        let ending = MAX_KEPT_ISOLATIONS / 8 + 1;
        for i in 0..MAX_KEPT_ISOLATIONS {
            let isolation = if i < ending { timed(1_000) } else { manual.clone() };
            kept.keep(&format!("host-{i}"), isolation, 0);
        }
        assert_eq!(kept.len(), MAX_KEPT_ISOLATIONS);
        kept.keep("host-1", timed(1_000), 2_000);
        assert_eq!(kept.len(), MAX_KEPT_ISOLATIONS, "a host kept already is only updated");
        kept.keep("next", manual.clone(), 2_000);
        assert_eq!(kept.len(), MAX_KEPT_ISOLATIONS - ending + 1, "the ended isolations made room, and only they went");
        assert!((ending..MAX_KEPT_ISOLATIONS).all(|i| kept.in_force(&format!("host-{i}"), 2_000).is_some()));
        assert!(kept.in_force("next", 2_000).is_some());
        // Full of isolations that never end: an eighth goes at once, not one per new host.
        for i in 0..ending - 1 {
            kept.keep(&format!("flood-{i}"), manual.clone(), 2_000);
        }
        assert_eq!(kept.len(), MAX_KEPT_ISOLATIONS);
        kept.keep("one-more", manual.clone(), 2_000);
        assert_eq!(kept.len(), room + 1, "room for an eighth more");
        assert!(kept.in_force("one-more", 2_000).is_some());
        for i in 0..MAX_KEPT_ISOLATIONS / 8 - 1 {
            kept.keep(&format!("second-flood-{i}"), manual.clone(), 2_000);
        }
        assert_eq!(kept.len(), MAX_KEPT_ISOLATIONS, "no pass until it is full again");
    }

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
    fn isolations_kept_by_earlier_versions_are_handed_over_once_and_then_removed() {
        let old = HostIsolation {
            mode: IsolationMode::Automatic,
            deadline_ms: Some(100),
            isolated_by: BTreeMap::from([("r".to_owned(), 60_000)]),
        };
        let entries = [
            (entry_key(LEGACY_ISOLATION, &["ws-1"]), br#"{"mode":"automatic","deadline_ms":100,"rules":{"r":60000}}"#.to_vec()),
            (vec![RECENT], b"[5]".to_vec()),
        ];
        let mut state = EngineState::from_entries(entries).unwrap();
        assert_eq!(state.take_legacy_isolations(), HashMap::from([("ws-1".to_owned(), old)]));
        assert!(state.take_legacy_isolations().is_empty(), "given once");
        assert_eq!(state.take_changes(), vec![(entry_key(LEGACY_ISOLATION, &["ws-1"]), None)]);
        assert!(state.take_changes().is_empty());
        // A state kept whole by an even older version.
        let whole = r#"{"seen":[],"thresholds":{},"escalations":{},"recent_isolations":[],
            "active":{"ws-2":{"mode":"manual","deadline_ms":null,"rules":{"operator o":0}}}}"#;
        let mut state: EngineState = serde_json::from_str(whole).unwrap();
        assert_eq!(state.take_legacy_isolations()["ws-2"].mode, IsolationMode::Manual);
        assert!(!serde_json::to_string(&state).unwrap().contains("active"), "never written again");
    }

    #[test]
    fn event_keys_are_stable() {
        // FNV-1a 64 of b"ws-1\x1fe1", computed independently.
        assert_eq!(event_key("ws-1", "e1"), 0x35a7_1e45_6d26_bfe0);
        assert_ne!(event_key("ws-1", "e1"), event_key("ws-1e", "1"));
    }
}
