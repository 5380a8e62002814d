//! The service's durable state in sled: one record per host (and, in memory, the indexes the
//! scheduled work scans, read from the records), the rules engine's state, the audit trail, the
//! registry of agent keys (and the keys that claimed a host without being enrolled), and the outbox of signed commands and dead
//! letters (with the entries parked because the broker can never take them), and every version
//! of the central isolation policy.
//!
//! Commands are written to the outbox in the same flush as the state change that causes them,
//! and sent (then removed) only after that flush: a crash at any moment loses no command, and a
//! command sent twice is refused by the agent as a stale generation.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sled::Transactional as _;

use super::events::{LegacyIsolationsAdopted, UnreadableRecordNotWatched};

pub use super::agents::{AgentRecord, Claim};
pub use super::lifecycle::{AuditEntry, HostForRules, HostRecord, HostState, HostSummary};
pub use super::profiles::{IsolationPolicy, PolicyVersion};

/// A command waiting to be sent, stored as the host's length (2 bytes, big-endian), the host,
/// and the command's bytes: nothing to encode or decode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxEntry {
    pub host: String,
    pub command: Outgoing,
}

/// A command as the outbox keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outgoing {
    /// Its JSON text (`{"version":...`), signed by the sender as it goes out: signing is the
    /// costliest part of a command, and the sender does it off the loop.
    Unsigned(String),
    /// Its sealed envelope (`{"payload":...`), as earlier versions kept it; sent as it is.
    Sealed(Vec<u8>),
}

/// How a sealed envelope's bytes begin (serde writes `Envelope`'s fields in order).
const SEALED_PREFIX: &[u8] = b"{\"payload\"";

impl OutboxEntry {
    fn to_bytes(&self) -> Result<Vec<u8>> {
        let length = u16::try_from(self.host.len()).context("a host id longer than 65,535 bytes")?;
        let command = match &self.command {
            Outgoing::Unsigned(text) => text.as_bytes(),
            Outgoing::Sealed(envelope) => envelope,
        };
        let mut bytes = Vec::with_capacity(2 + self.host.len() + command.len());
        bytes.extend_from_slice(&length.to_be_bytes());
        bytes.extend_from_slice(self.host.as_bytes());
        bytes.extend_from_slice(command);
        Ok(bytes)
    }

    fn from_bytes(bytes: &[u8]) -> Result<OutboxEntry> {
        let unreadable = || anyhow::anyhow!("an outbox entry is unreadable");
        let length = usize::from(u16::from_be_bytes(bytes.get(..2).ok_or_else(unreadable)?.try_into()?));
        let host = bytes.get(2..2 + length).ok_or_else(unreadable)?;
        let command = &bytes[2 + length..];
        let command = if command.starts_with(SEALED_PREFIX) {
            Outgoing::Sealed(command.to_vec())
        } else {
            Outgoing::Unsigned(String::from_utf8(command.to_vec()).map_err(|_| unreadable())?)
        };
        Ok(OutboxEntry { host: String::from_utf8(host.to_vec()).map_err(|_| unreadable())?, command })
    }
}

/// A dead letter waiting to be sent: the Kafka key (u32 length, big-endian) and the record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetterEntry {
    pub key: Vec<u8>,
    pub record: Vec<u8>,
}

impl DeadLetterEntry {
    fn to_bytes(&self) -> Result<Vec<u8>> {
        let length = u32::try_from(self.key.len()).context("a dead-letter key longer than 4 GiB")?;
        let mut bytes = Vec::with_capacity(4 + self.key.len() + self.record.len());
        bytes.extend_from_slice(&length.to_be_bytes());
        bytes.extend_from_slice(&self.key);
        bytes.extend_from_slice(&self.record);
        Ok(bytes)
    }

    fn from_bytes(bytes: &[u8]) -> Result<DeadLetterEntry> {
        let unreadable = || anyhow::anyhow!("a dead-letter entry is unreadable");
        let length = usize::try_from(u32::from_be_bytes(bytes.get(..4).ok_or_else(unreadable)?.try_into()?))?;
        let key = bytes.get(4..4usize.saturating_add(length)).ok_or_else(unreadable)?;
        Ok(DeadLetterEntry { key: key.to_vec(), record: bytes[4 + length..].to_vec() })
    }
}

/// The name of the file beside the store that holds its identity.
const IDENTITY_FILE: &str = "store-id";
const IDENTITY_KEY: &[u8] = b"store_id";

/// Refuses a store that is not the one this state directory had: sled recovers a store whose
/// files are damaged by keeping what it can read, which can be nothing at all, and an empty store
/// would silently forget every isolation. The store keeps a random identity, and the state
/// directory a copy of it (`store-id`): a store that lost it while the copy is there is refused.
/// A new store (no copy, nothing in it) gets one; a store from before identities gets one too.
fn check_identity(db: &sled::Db, dir: &Path, path: &Path) -> Result<()> {
    let copy_path = dir.join(IDENTITY_FILE);
    let copy = match std::fs::read_to_string(&copy_path) {
        Ok(text) => Some(text.trim().to_owned()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => return Err(error).with_context(|| format!("cannot read {}", copy_path.display())),
    };
    let stored = db.get(IDENTITY_KEY)?.map(|id| String::from_utf8_lossy(&id).into_owned());
    match (stored, copy) {
        (Some(stored), Some(copy)) if stored == copy => Ok(()),
        (Some(stored), Some(copy)) => anyhow::bail!(
            "the state store {} is not the one of this state directory (its identity is {stored}, {} says \
             {copy}): cordon does not start on it (docs/operations.md, \"A lost or corrupt state store\")",
            path.display(),
            copy_path.display()
        ),
        (None, Some(copy)) => anyhow::bail!(
            "the state store {} has lost its contents (it no longer holds the identity {copy} that {} \
             records: damaged or replaced). cordon does not start on it, as it would forget every isolation: \
             restore the store from a backup, or, to start empty on purpose, remove {} \
             (docs/operations.md, \"A lost or corrupt state store\")",
            path.display(),
            copy_path.display(),
            copy_path.display()
        ),
        (stored, None) => {
            let id = if let Some(id) = stored {
                id
            } else {
                let id = super::outbox::hex(&cordon_wire::generate_signing_key().to_bytes()[..16]);
                db.insert(IDENTITY_KEY, id.as_bytes())?;
                db.flush().context("cannot flush the state store")?;
                id
            };
            std::fs::write(&copy_path, format!("{id}\n"))
                .with_context(|| format!("cannot write {}", copy_path.display()))
        }
    }
}

/// How long audit entries and API call records are kept (`[state]` in `cordon.toml`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retention {
    pub audit_ms: i64,
    /// The newest entries kept per host (at least 1: `StateSection::retention` sees to it).
    pub audit_per_host: usize,
    pub api_calls_ms: i64,
}

/// What one retention pass removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetentionOutcome {
    pub audit_entries: usize,
    pub api_calls: usize,
}

/// Version 1 of every store's policy: [`IsolationPolicy::seed`].
fn seed_policy() -> PolicyVersion {
    PolicyVersion {
        version: 1,
        at_ms: super::now_ms(),
        author: "cordon".to_owned(),
        reason: format!(
            "the seed policy: a default profile that leaves nothing open, automatic isolations without a duration \
             lasting {} (KESL's default)",
            super::profiles::format_seconds(super::profiles::SEED_AUTOMATIC_DURATION_SECONDS)
        ),
        reverted_from: None,
        policy: IsolationPolicy::seed(),
    }
}

/// An outbox key as the sender and the loop pass it around.
fn outbox_key(bytes: &[u8]) -> u64 {
    bytes.try_into().map_or(0, u64::from_be_bytes)
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

/// The open sled database and its trees; replaced whole when the store is reopened.
struct Trees {
    db: sled::Db,
    hosts: sled::Tree,
    /// Keyed by host, then a sequence number: one host's trail is one range.
    audit: sled::Tree,
    outbox: sled::Tree,
    /// Dead letters waiting to be sent (keys from the same sequence as the outbox's).
    dead_letters: sled::Tree,
    /// Outbox entries the broker can never take, with the reason: kept for an operator, never sent.
    parked: sled::Tree,
    api_calls: sled::Tree,
    /// Enrolled and revoked agent keys by host: written by operators (the API) only.
    agents: sled::Tree,
    /// Keys that signed reports for a host without being enrolled for it: written by the loop only.
    claims: sled::Tree,
    counts_tree: sled::Tree,
    /// The rules engine's state, by entries (`rules::EngineState::take_changes`).
    engine: sled::Tree,
    /// Every version of the isolation policy, keyed by its number (big-endian): the last is in force.
    policy: sled::Tree,
}

/// The trees the loop's writes go to, staged until [`Store::commit`]; in the order of [`SLOTS`]
/// (a slot's number is its place there).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Slot {
    /// The database's default tree (the engine state).
    Default,
    Hosts,
    Audit,
    Outbox,
    DeadLetters,
    Claims,
    Counts,
    Engine,
    Policy,
}

const SLOTS: [Slot; 9] = [
    Slot::Default,
    Slot::Hosts,
    Slot::Audit,
    Slot::Outbox,
    Slot::DeadLetters,
    Slot::Claims,
    Slot::Counts,
    Slot::Engine,
    Slot::Policy,
];

impl Trees {
    fn slot(&self, slot: Slot) -> &sled::Tree {
        match slot {
            Slot::Default => &self.db,
            Slot::Hosts => &self.hosts,
            Slot::Audit => &self.audit,
            Slot::Outbox => &self.outbox,
            Slot::DeadLetters => &self.dead_letters,
            Slot::Claims => &self.claims,
            Slot::Counts => &self.counts_tree,
            Slot::Engine => &self.engine,
            Slot::Policy => &self.policy,
        }
    }
}

/// The loop's writes since its last commit: the newest value per key (`None`: removed), which
/// is what the loop reads back before the commit and what the commit writes (the transaction
/// makes them all visible at once, so their order does not matter).
type Staged = HashMap<(Slot, Vec<u8>), Option<Vec<u8>>>;

/// The state store, shared by the loop, the outbox's sender and the API. After a write error
/// (a full disk) sled refuses every later operation until the database is opened again, so the
/// trees sit behind a lock that [`Store::reopen`] swaps for freshly opened ones.
#[derive(Clone)]
pub struct Store {
    dir: std::path::PathBuf,
    trees: Arc<RwLock<Option<Arc<Trees>>>>,
    /// Why the store cannot be written, while it cannot (set by the loop, cleared once a write
    /// goes through again): `/readyz` and the sender read it.
    fault: Arc<Mutex<Option<String>>>,
    /// The loop's changes not yet committed: one handler's changes (a whole batch) go to sled
    /// in one transaction, so that a crash or a failed write keeps all of them or none (sled
    /// alone writes pages, not operations: a failed flush can keep a host's audit entry and
    /// lose its record, or its record and lose its audit entry).
    staged: Arc<Mutex<Staged>>,
    /// What the loop's scheduled work looks for among the hosts (deadlines, unanswered
    /// commands, silent agents), indexed.
    watched: Arc<Mutex<Watched>>,
    /// What the rules engine is told of every known host (its trusted tags and the isolation in
    /// force), read once from its record and kept in step by `put_host`: the engine needs it for
    /// every detection, and decoding the record each time is most of the cost of a detection
    /// that decides nothing.
    for_rules: Arc<Mutex<HashMap<String, Arc<HostForRules>>>>,
    /// How many entries `claims` holds, counted once at open and kept by `put_claim` and
    /// `remove_claim` (sled counts a tree by reading all of it, which a flood of forged reports
    /// would make the loop do for each one).
    claims_len: Arc<AtomicUsize>,
    /// How many hosts are in each state and how many agents are stale, kept in step by
    /// `put_host` (in memory, and in sled so that a restart need not read every record).
    counts: Arc<Mutex<HostCounts>>,
    /// The policy version in force: the last of the `policy` tree (or staged for it), read for
    /// every isolation.
    policy: Arc<RwLock<Arc<PolicyVersion>>>,
    /// Every host's summary, by host id, for the console's fleet page: read from the records on
    /// the first look, then kept in step by `put_host` (`None` until someone looks).
    fleet: Arc<Mutex<Option<BTreeMap<String, HostSummary>>>>,
}

/// Hosts by state, and stale agents: what the fleet gauges show.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostCounts {
    pub by_state: BTreeMap<&'static str, i64>,
    pub stale_agents: i64,
}

const STALE_KEY: &str = "stale_agents";

const ENGINE_KEY: &[u8] = b"engine";

/// Where `check_writable` writes.
const WRITE_CHECK_KEY: &[u8] = b"write_check";

/// What the loop's scheduled work looks for among the hosts, so that it need not read every
/// record to find it: the isolations in force with a deadline, by deadline (the tick lifts them,
/// every 100 ms), the hosts whose last command awaits its agent's answer (the resend job sends
/// it again, every few seconds) and the agents not marked stale, by when they were last heard
/// from (the stale job marks the silent ones). Not trees of their own: the host records own
/// these facts, so the indexes are read from them when the store opens, and each commit changes
/// them by what it made durable (they answer for what the store holds, never for what is only
/// staged). Earlier versions kept the deadlines in sled, one more key to remove and one to write
/// for each isolating decision, and the resend and stale jobs read every record each time.
#[derive(Debug, Default)]
struct Watched {
    deadlines: BTreeSet<(i64, String)>,
    awaiting_answer: BTreeSet<String>,
    heard_from: BTreeSet<(i64, String)>,
    /// Changes staged with the records they come from, in order: the host, what was indexed of
    /// its previous record, and what is of its new one.
    staged: Vec<(String, WatchedFacts, WatchedFacts)>,
}

/// What is indexed of one host record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct WatchedFacts {
    /// [`HostRecord::deadline_in_force`].
    deadline: Option<i64>,
    /// Its last command awaits an answer ([`HostRecord::awaiting_answer_since`]).
    awaiting_answer: bool,
    /// [`HostRecord::heard_from_unless_stale`].
    heard_from: Option<i64>,
}

impl WatchedFacts {
    fn of(record: &HostRecord) -> WatchedFacts {
        WatchedFacts {
            deadline: record.deadline_in_force(),
            awaiting_answer: record.awaiting_answer_since().is_some(),
            heard_from: record.heard_from_unless_stale(),
        }
    }
}

impl Watched {
    /// Indexes (or, `add` false, unindexes) `facts` of `host`.
    fn index(&mut self, host: &str, facts: WatchedFacts, add: bool) {
        fn put<T: Ord>(set: &mut BTreeSet<T>, entry: T, add: bool) {
            if add {
                set.insert(entry);
            } else {
                set.remove(&entry);
            }
        }
        if let Some(deadline) = facts.deadline {
            put(&mut self.deadlines, (deadline, host.to_owned()), add);
        }
        if facts.awaiting_answer {
            put(&mut self.awaiting_answer, host.to_owned(), add);
        }
        if let Some(heard_from) = facts.heard_from {
            put(&mut self.heard_from, (heard_from, host.to_owned()), add);
        }
    }
}

/// The free space sled must have to open the store. Opening runs sled's recovery, which writes
/// (the log's torn tail made good after a crash, a new snapshot); a recovery cut short by a full
/// disk can leave the store unreadable for good ("corrupt" at every later start, with the space
/// back): found by the chaos soak (a `kill -9` then a restart on a full disk) and reproduced with
/// sled alone. So cordon does not open the store without this much room, or an eighth of the
/// store's size if that is more.
pub const ROOM_TO_OPEN_BYTES: u64 = 16 * 1024 * 1024;

/// Why the store was not opened: too little room on its disk (see [`ROOM_TO_OPEN_BYTES`]).
#[derive(Debug, thiserror::Error)]
#[error(
    "the state store {path} was not opened: {free_mib} MiB free on its disk, {need_mib} MiB needed (opening it \
     runs sled's recovery, and a write cut short by a full disk can damage the store for good); free some space"
)]
pub struct NoRoomToOpen {
    pub path: String,
    pub free_mib: u64,
    pub need_mib: u64,
}

fn check_room_to_open(dir: &Path, path: &Path) -> Result<()> {
    let free = fs2::available_space(dir).with_context(|| format!("cannot read the free space of {}", dir.display()))?;
    let store_bytes: u64 = std::fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.metadata().ok())
        .filter(std::fs::Metadata::is_file)
        .map(|metadata| metadata.len())
        .sum();
    let need = ROOM_TO_OPEN_BYTES.max(store_bytes / 8);
    if free < need {
        return Err(NoRoomToOpen {
            path: path.display().to_string(),
            free_mib: free / (1024 * 1024),
            need_mib: need.div_ceil(1024 * 1024),
        }
        .into());
    }
    Ok(())
}

impl Trees {
    /// Opens the store in `dir` (creating it) and checks that it is this directory's; refuses
    /// ([`NoRoomToOpen`]) when its disk has too little room for sled's recovery.
    /// Opens the store again right after its last handle was dropped: sled's background
    /// flusher lets go of the file lock a moment later (seen under load, where a reopen found
    /// the lock still held), so a held lock is waited for, at most 2 s.
    fn open_when_released(dir: &Path) -> Result<Trees> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            match Trees::open(dir) {
                Err(error)
                    if format!("{error:#}").contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                opened => return opened,
            }
        }
    }

    fn open(dir: &Path) -> Result<Trees> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create state directory {}", dir.display()))?;
        let path = dir.join("orchestrator.sled");
        check_room_to_open(dir, &path)?;
        let db = sled::open(&path).map_err(|error| match error {
            sled::Error::Corruption { .. } => anyhow::anyhow!(
                "the state store {} is corrupt ({error}). cordon does not start on it: restore it from a \
                 backup, or move it aside to start empty (docs/operations.md, \"A lost or corrupt state store\")",
                path.display()
            ),
            other => anyhow::Error::new(other).context(format!("cannot open state store {}", path.display())),
        })?;
        check_identity(&db, dir, &path)?;
        // Earlier versions kept the deadline index in this tree; it is read from the records now,
        // and a copy no longer kept in step must not stay behind.
        db.drop_tree("deadlines").context("cannot drop the old deadline index")?;
        Ok(Trees {
            hosts: db.open_tree("hosts")?,
            audit: db.open_tree("audit")?,
            outbox: db.open_tree("outbox")?,
            dead_letters: db.open_tree("dead_letters")?,
            parked: db.open_tree("parked")?,
            api_calls: db.open_tree("api_calls")?,
            agents: db.open_tree("agents")?,
            claims: db.open_tree("claims")?,
            counts_tree: db.open_tree("counts")?,
            engine: db.open_tree("engine")?,
            policy: db.open_tree("policy")?,
            db,
        })
    }
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store> {
        let store = Store {
            dir: dir.to_path_buf(),
            trees: Arc::new(RwLock::new(Some(Arc::new(Trees::open(dir)?)))),
            fault: Arc::default(),
            staged: Arc::default(),
            watched: Arc::default(),
            claims_len: Arc::default(),
            for_rules: Arc::default(),
            counts: Arc::default(),
            policy: Arc::new(RwLock::new(Arc::new(seed_policy()))),
            fleet: Arc::default(),
        };
        store.load_memory()?;
        Ok(store)
    }

    /// Reads what the store keeps in memory from the trees.
    fn load_memory(&self) -> Result<()> {
        self.for_rules.lock().unwrap_or_else(PoisonError::into_inner).clear();
        self.fleet.lock().unwrap_or_else(PoisonError::into_inner).take();
        self.load_watched()?;
        self.load_counts()?;
        self.claims_len.store(self.trees()?.claims.len(), Ordering::SeqCst);
        self.load_policy()
    }

    /// Reads the indexes of what the scheduled work looks for from the host records. An
    /// unreadable record is said and passed over: one damaged record must not keep cordon from
    /// watching every other host.
    fn load_watched(&self) -> Result<()> {
        let trees = self.trees()?;
        let mut watched = Watched::default();
        for item in &trees.hosts {
            let (host, bytes) = item?;
            let host = String::from_utf8_lossy(&host).into_owned();
            // Read whole, as `host` reads it: a record indexed here is one the loop can act on.
            match serde_json::from_slice::<HostRecord>(&bytes) {
                Ok(record) => watched.index(&host, WatchedFacts::of(&record), true),
                Err(error) => UnreadableRecordNotWatched { host: &host, error: &anyhow::Error::new(error) }.emit(),
            }
        }
        *self.watched.lock().unwrap_or_else(PoisonError::into_inner) = watched;
        Ok(())
    }

    /// Reads the policy version in force; a store without one gets the seed, durably.
    fn load_policy(&self) -> Result<()> {
        let trees = self.trees()?;
        let current = if let Some((_, bytes)) = trees.policy.last()? {
            serde_json::from_slice(&bytes).context("the isolation policy in force is unreadable")?
        } else {
            let seed = seed_policy();
            trees.policy.insert(seed.version.to_be_bytes(), serde_json::to_vec(&seed)?)?;
            trees.policy.flush().context("cannot write the seed isolation policy")?;
            seed
        };
        *self.policy.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(current);
        Ok(())
    }

    /// Stages a write (`None`: a removal) until the next commit.
    fn stage(&self, slot: Slot, key: &[u8], value: Option<Vec<u8>>) {
        self.staged.lock().unwrap_or_else(PoisonError::into_inner).insert((slot, key.to_vec()), value);
    }

    /// A key's value as the loop sees it: staged, or else stored.
    fn read(&self, trees: &Trees, slot: Slot, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(value) = self.staged.lock().unwrap_or_else(PoisonError::into_inner).get(&(slot, key.to_vec())) {
            return Ok(value.clone());
        }
        Ok(trees.slot(slot).get(key)?.map(|value| value.to_vec()))
    }

    /// Puts everything staged in sled in one transaction, then makes it durable. Staged writes
    /// are dropped even if this fails: the loop opens the store again and starts over from
    /// what it holds.
    pub fn commit(&self) -> Result<()> {
        let trees = self.trees()?;
        // The fleet's summaries are first read from the trees plus what is staged: no first look
        // may fall between taking the staged writes and their landing in the trees.
        let fleet = self.fleet.lock().unwrap_or_else(PoisonError::into_inner);
        let staged = std::mem::take(&mut *self.staged.lock().unwrap_or_else(PoisonError::into_inner));
        let watched_changes =
            std::mem::take(&mut self.watched.lock().unwrap_or_else(PoisonError::into_inner).staged);
        if !staged.is_empty() {
            let all: Vec<&sled::Tree> = SLOTS.iter().map(|slot| trees.slot(*slot)).collect();
            all.as_slice()
                .transaction(|views| {
                    for ((slot, key), value) in &staged {
                        let view = &views[*slot as usize];
                        match value {
                            Some(value) => view.insert(key.as_slice(), value.as_slice())?,
                            None => view.remove(key.as_slice())?,
                        };
                    }
                    Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
                })
                .map_err(|error| match error {
                    sled::transaction::TransactionError::Storage(error) => anyhow::Error::new(error),
                    sled::transaction::TransactionError::Abort(()) => anyhow::anyhow!("the commit was aborted"),
                })
                .context("cannot write the state store")?;
        }
        drop(fleet);
        trees.db.flush().context("cannot flush the state store")?;
        let mut watched = self.watched.lock().unwrap_or_else(PoisonError::into_inner);
        for (host, before, after) in watched_changes {
            watched.index(&host, before, false);
            watched.index(&host, after, true);
        }
        Ok(())
    }

    /// The open trees, or an error while the store is being reopened.
    fn trees(&self) -> Result<Arc<Trees>> {
        self.trees
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .with_context(|| format!("the state store in {} is closed (being reopened)", self.dir.display()))
    }

    /// Closes the database and opens it again: the only way out of sled's refusal of every
    /// operation after a write error. What was flushed before the error is what the reopened
    /// store holds. Fails (and is to be tried again) while another handle still holds the
    /// database, or while the disk still refuses it.
    pub fn reopen(&self) -> Result<()> {
        self.staged.lock().unwrap_or_else(PoisonError::into_inner).clear();
        self.watched.lock().unwrap_or_else(PoisonError::into_inner).staged.clear();
        let mut slot = self.trees.write().unwrap_or_else(PoisonError::into_inner);
        drop(slot.take());
        *slot = Some(Arc::new(Trees::open_when_released(&self.dir)?));
        drop(slot);
        self.load_memory()
    }

    /// Writes a small marker and flushes it: whether the store takes writes again.
    pub fn check_writable(&self, now_ms: i64) -> Result<()> {
        let trees = self.trees()?;
        trees.db.insert(WRITE_CHECK_KEY, &now_ms.to_be_bytes())?;
        trees.db.flush().context("cannot flush the state store")?;
        Ok(())
    }

    /// The store cannot be written, and why (the loop says so; `/readyz` shows it).
    pub fn set_fault(&self, why: Option<String>) {
        *self.fault.lock().unwrap_or_else(PoisonError::into_inner) = why;
    }

    /// Why the store cannot be written, if it cannot.
    pub fn fault(&self) -> Option<String> {
        self.fault.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Reads the kept counts; a store written before they were kept is counted once.
    fn load_counts(&self) -> Result<()> {
        let trees = self.trees()?;
        let mut counts = HostCounts::default();
        if trees.counts_tree.is_empty() && !trees.hosts.is_empty() {
            for item in &trees.hosts {
                // An unreadable record is not counted (`load_watched` has said it, at this open).
                let Ok(record) = serde_json::from_slice::<HostRecord>(&item?.1) else { continue };
                *counts.by_state.entry(record.state.name()).or_default() += 1;
                counts.stale_agents += i64::from(record.agent_stale);
            }
            for (name, count) in &counts.by_state {
                trees.counts_tree.insert(name.as_bytes(), &count.to_be_bytes())?;
            }
            trees.counts_tree.insert(STALE_KEY.as_bytes(), &counts.stale_agents.to_be_bytes())?;
        } else {
            for item in &trees.counts_tree {
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

    /// Whether the store answers reads and takes writes (for `/readyz`).
    pub fn usable(&self) -> Result<()> {
        if let Some(fault) = self.fault() {
            anyhow::bail!("{fault}");
        }
        let trees = self.trees()?;
        trees.hosts.first().context("the state store does not answer reads")?;
        Ok(())
    }

    /// Hosts by state and stale agents, now.
    pub fn counts(&self) -> HostCounts {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn count_change(&self, previous: Option<&HostRecord>, record: &HostRecord) {
        let was = previous.map(|p| (p.state, p.agent_stale));
        if was == Some((record.state, record.agent_stale)) {
            return;
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
            self.stage(Slot::Counts, name.as_bytes(), Some(value.to_be_bytes().to_vec()));
        }
    }

    pub fn host(&self, host: &str) -> Result<Option<HostRecord>> {
        let trees = self.trees()?;
        let Some(bytes) = self.read(&trees, Slot::Hosts, host.as_bytes())? else { return Ok(None) };
        Ok(Some(
            serde_json::from_slice(&bytes)
                .with_context(|| format!("the record of host {host} is unreadable"))?,
        ))
    }

    pub fn hosts(&self) -> Result<Vec<HostRecord>> {
        let trees = self.trees()?;
        trees.hosts
            .iter()
            .values()
            .map(|value| serde_json::from_slice(&value?).context("a host record is unreadable"))
            .collect()
    }

    /// What the rules engine is told of `host` (see [`HostRecord::for_rules`]): its isolation in
    /// force, and the tags it may act on (they decide protection), the operators' only. Tags an
    /// agent reports never grant protection: whoever controls a host, or can write to the status
    /// topic, could otherwise turn every automatic isolation of it into a request for approval.
    /// None for a host cordon does not know; only known hosts are kept in memory (detections
    /// name any host id they like, and a flood of made-up ones must not grow it).
    pub fn for_rules(&self, host: &str) -> Result<Option<Arc<HostForRules>>> {
        if let Some(known) = self.for_rules.lock().unwrap_or_else(PoisonError::into_inner).get(host) {
            return Ok(Some(Arc::clone(known)));
        }
        let Some(record) = self.host(host)? else { return Ok(None) };
        let known = Arc::new(record.for_rules());
        self.for_rules.lock().unwrap_or_else(PoisonError::into_inner).insert(host.to_owned(), Arc::clone(&known));
        Ok(Some(known))
    }

    /// How many hosts the rules' view is kept in memory for.
    pub fn cached_for_rules(&self) -> usize {
        self.for_rules.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Stores `record` and keeps the indexes of what the scheduled work looks for in step with
    /// it (once committed). Staged until `commit`.
    pub fn put_host(&self, previous: Option<&HostRecord>, record: &HostRecord) -> Result<()> {
        self.for_rules
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(record.host.clone(), Arc::new(record.for_rules()));
        let before = previous.map(WatchedFacts::of).unwrap_or_default();
        let change = (record.host.clone(), before, WatchedFacts::of(record));
        self.watched.lock().unwrap_or_else(PoisonError::into_inner).staged.push(change);
        self.stage(Slot::Hosts, record.host.as_bytes(), Some(serde_json::to_vec(record)?));
        self.count_change(previous, record);
        if let Some(fleet) = self.fleet.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
            fleet.insert(record.host.clone(), record.summary());
        }
        Ok(())
    }

    /// `look` at every host's summary, in host order (read from the records the first time).
    pub fn with_fleet<T>(&self, look: impl FnOnce(&BTreeMap<String, HostSummary>) -> T) -> Result<T> {
        let mut fleet = self.fleet.lock().unwrap_or_else(PoisonError::into_inner);
        if fleet.is_none() {
            let mut summaries: BTreeMap<String, HostSummary> =
                self.hosts()?.iter().map(|record| (record.host.clone(), record.summary())).collect();
            // What the loop staged and has not committed yet is what it acts on: as `host` reads.
            let staged = self.staged.lock().unwrap_or_else(PoisonError::into_inner);
            for ((slot, key), value) in staged.iter() {
                let Some(value) = value.as_deref().filter(|_| *slot == Slot::Hosts) else { continue };
                let record: HostRecord = serde_json::from_slice(value).context("a staged host record is unreadable")?;
                summaries.insert(String::from_utf8_lossy(key).into_owned(), record.summary());
            }
            *fleet = Some(summaries);
        }
        Ok(look(fleet.as_ref().expect("filled above")))
    }

    /// The operators' decision about `host`'s agent key, if any.
    pub fn agent(&self, host: &str) -> Result<Option<AgentRecord>> {
        let trees = self.trees()?;
        let Some(bytes) = trees.agents.get(host.as_bytes())? else { return Ok(None) };
        Ok(Some(
            serde_json::from_slice(&bytes)
                .with_context(|| format!("the agent record of {host} is unreadable"))?,
        ))
    }

    pub fn agents(&self) -> Result<Vec<AgentRecord>> {
        let trees = self.trees()?;
        trees.agents
            .iter()
            .values()
            .map(|value| serde_json::from_slice(&value?).context("an agent record is unreadable"))
            .collect()
    }

    /// Records an operator's enrolment or revocation, durably (the API answers after it).
    pub fn put_agent(&self, record: &AgentRecord) -> Result<()> {
        let trees = self.trees()?;
        trees.agents.insert(record.host.as_bytes(), serde_json::to_vec(record)?)?;
        trees.agents.flush()?;
        Ok(())
    }

    pub fn claim(&self, host: &str) -> Result<Option<Claim>> {
        let trees = self.trees()?;
        let Some(bytes) = self.read(&trees, Slot::Claims, host.as_bytes())? else { return Ok(None) };
        Ok(Some(
            serde_json::from_slice(&bytes)
                .with_context(|| format!("the key claim for {host} is unreadable"))?,
        ))
    }

    pub fn claims(&self) -> Result<Vec<Claim>> {
        let trees = self.trees()?;
        trees.claims
            .iter()
            .values()
            .map(|value| serde_json::from_slice(&value?).context("a key claim is unreadable"))
            .collect()
    }

    /// Staged until `commit`.
    /// Staged until `commit`.
    pub fn put_claim(&self, claim: &Claim) -> Result<()> {
        let trees = self.trees()?;
        if self.read(&trees, Slot::Claims, claim.host.as_bytes())?.is_none() {
            self.claims_len.fetch_add(1, Ordering::SeqCst);
        }
        self.stage(Slot::Claims, claim.host.as_bytes(), Some(serde_json::to_vec(claim)?));
        Ok(())
    }

    /// Staged until `commit`.
    pub fn remove_claim(&self, host: &str) -> Result<()> {
        let trees = self.trees()?;
        if self.read(&trees, Slot::Claims, host.as_bytes())?.is_some() {
            self.claims_len.fetch_sub(1, Ordering::SeqCst);
            self.stage(Slot::Claims, host.as_bytes(), None);
        }
        Ok(())
    }

    /// How many hosts have a claim held.
    pub fn claims_count(&self) -> usize {
        self.claims_len.load(Ordering::SeqCst)
    }

    /// Hosts whose deadline is at or before `now_ms`, earliest first.
    pub fn due(&self, now_ms: i64) -> Result<Vec<String>> {
        let watched = self.watched()?;
        let due = watched.deadlines.iter().take_while(|(deadline, _)| *deadline <= now_ms);
        Ok(due.map(|(_, host)| host.clone()).collect())
    }

    /// Hosts whose agent, not marked stale, was last heard from before `before_ms`, the longest
    /// silent first.
    pub fn heard_from_before(&self, before_ms: i64) -> Result<Vec<String>> {
        let watched = self.watched()?;
        let silent = watched.heard_from.iter().take_while(|(heard_from, _)| *heard_from < before_ms);
        Ok(silent.map(|(_, host)| host.clone()).collect())
    }

    /// Hosts whose last command awaits its agent's answer, by host id.
    pub fn awaiting_answer(&self) -> Result<Vec<String>> {
        Ok(self.watched()?.awaiting_answer.iter().cloned().collect())
    }

    /// The indexes of what the scheduled work looks for; an error while the store is being
    /// reopened (they are read again with it).
    fn watched(&self) -> Result<std::sync::MutexGuard<'_, Watched>> {
        self.trees()?;
        Ok(self.watched.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Staged until `commit` (the loop's entries go with the change they tell of).
    pub fn audit(&self, entry: &AuditEntry) -> Result<()> {
        let key = self.audit_key(entry)?;
        self.stage(Slot::Audit, &key, Some(serde_json::to_vec(entry)?));
        Ok(())
    }

    /// Writes an audit entry at once, outside the loop's commits (the API's own changes).
    pub fn audit_now(&self, entry: &AuditEntry) -> Result<()> {
        let key = self.audit_key(entry)?;
        self.trees()?.audit.insert(key, serde_json::to_vec(entry)?)?;
        Ok(())
    }

    fn audit_key(&self, entry: &AuditEntry) -> Result<Vec<u8>> {
        let id = self.trees()?.db.generate_id()?;
        let mut key = entry.host.as_bytes().to_vec();
        key.push(0);
        key.extend_from_slice(&id.to_be_bytes());
        Ok(key)
    }

    /// A host's audit trail, oldest first.
    pub fn audit_of(&self, host: &str) -> Result<Vec<AuditEntry>> {
        let trees = self.trees()?;
        let mut prefix = host.as_bytes().to_vec();
        prefix.push(0);
        trees.audit
            .scan_prefix(prefix)
            .values()
            .map(|value| serde_json::from_slice(&value?).context("an audit entry is unreadable"))
            .collect()
    }

    /// Every host's audit trail, host by host (the console's history filters and sorts it).
    pub fn audit_entries(&self) -> Result<Vec<AuditEntry>> {
        let trees = self.trees()?;
        trees.audit
            .iter()
            .values()
            .map(|value| serde_json::from_slice(&value?).context("an audit entry is unreadable"))
            .collect()
    }

    /// Removes audit entries older than the retention and, per host, all but the newest
    /// `per_host`; then API call records older than theirs. Returns how many were removed.
    pub fn apply_retention(&self, retention: &Retention, now_ms: i64) -> Result<RetentionOutcome> {
        let trees = self.trees()?;
        let mut outcome = RetentionOutcome::default();
        let audit_cutoff = now_ms.saturating_sub(retention.audit_ms);
        // One host's trail is one key range, oldest first: (key, time) per host, then trimmed.
        let mut trail: Vec<(sled::IVec, i64)> = Vec::new();
        let mut host: Vec<u8> = Vec::new();
        let trim = |trail: &mut Vec<(sled::IVec, i64)>, outcome: &mut RetentionOutcome| -> Result<()> {
            let over = trail.len().saturating_sub(retention.audit_per_host);
            for (index, (key, at)) in trail.iter().enumerate() {
                if index < over || *at < audit_cutoff {
                    trees.audit.remove(key)?;
                    outcome.audit_entries += 1;
                }
            }
            trail.clear();
            Ok(())
        };
        for item in &trees.audit {
            let (key, value) = item?;
            let this_host = key.split(|b| *b == 0).next().unwrap_or_default();
            if this_host != host.as_slice() {
                trim(&mut trail, &mut outcome)?;
                host = this_host.to_vec();
            }
            let at = serde_json::from_slice::<AuditEntry>(&value).map_or(i64::MIN, |entry| entry.at_ms);
            trail.push((key, at));
        }
        trim(&mut trail, &mut outcome)?;
        let calls_cutoff = now_ms.saturating_sub(retention.api_calls_ms);
        for item in &trees.api_calls {
            let (key, value) = item?;
            let at = serde_json::from_slice::<ApiCall>(&value).map_or(i64::MIN, |call| call.at_ms);
            if at >= calls_cutoff {
                break;
            }
            trees.api_calls.remove(key)?;
            outcome.api_calls += 1;
        }
        Ok(outcome)
    }

    pub fn record_api_call(&self, call: &ApiCall) -> Result<()> {
        let trees = self.trees()?;
        let id = trees.db.generate_id()?;
        trees.api_calls.insert(id.to_be_bytes(), serde_json::to_vec(call)?)?;
        Ok(())
    }

    /// Every API call, oldest first.
    pub fn api_calls(&self) -> Result<Vec<ApiCall>> {
        let trees = self.trees()?;
        trees.api_calls
            .iter()
            .values()
            .map(|value| serde_json::from_slice(&value?).context("an API call record is unreadable"))
            .collect()
    }

    /// The rules engine's state as it was last committed. A store from before the state was
    /// kept by entries holds it whole: read that, and write it as entries at the next commit.
    /// Hosts' isolations an earlier version kept in the engine's state move into the hosts'
    /// records (see [`Store::adopt_legacy_isolations`]).
    pub fn engine_state(&self) -> Result<rules::EngineState> {
        let trees = self.trees()?;
        let mut state = if !trees.engine.is_empty() {
            let entries: Vec<(sled::IVec, sled::IVec)> = trees.engine.iter().collect::<Result<_, _>>()?;
            rules::EngineState::from_entries(entries).map_err(anyhow::Error::msg)?
        } else if let Some(bytes) = trees.db.get(ENGINE_KEY)? {
            let mut state: rules::EngineState =
                serde_json::from_slice(&bytes).context("the stored rules engine state is unreadable")?;
            state.touch_all();
            self.stage(Slot::Default, ENGINE_KEY, None);
            state
        } else {
            rules::EngineState::default()
        };
        self.adopt_legacy_isolations(&mut state)?;
        Ok(state)
    }

    /// Earlier versions kept who isolated a host (for a rule's retrigger) in the engine's state
    /// as well as the host's record; the record is its only owner now. Each host still isolating
    /// or isolated gets it in its record (unless it has it already), and the old entries go, in
    /// one commit. Never fatal: a record that cannot be read keeps its host out of it (said), and
    /// if the commit fails the old entries stay for the next reading (the loop's own commit then
    /// finds the store unwritable and reopens it).
    fn adopt_legacy_isolations(&self, state: &mut rules::EngineState) -> Result<()> {
        let legacy = state.take_legacy_isolations();
        if legacy.is_empty() {
            return Ok(());
        }
        let mut adopted = 0;
        for (host, isolation) in legacy {
            let previous = match self.host(&host) {
                Ok(Some(previous)) => previous,
                Ok(None) => continue,
                Err(error) => {
                    LegacyIsolationsAdopted::HostSkipped { host: &host, error: &error }.emit();
                    continue;
                }
            };
            if !previous.state.isolation_in_force() || !previous.isolated_by.is_empty() {
                continue;
            }
            let mut record = previous.clone();
            record.isolated_by = isolation.isolated_by;
            self.put_host(Some(&previous), &record)?;
            adopted += 1;
        }
        self.put_engine_changes(state);
        if let Err(error) = self.commit() {
            LegacyIsolationsAdopted::NotCommitted { error: &error }.emit();
            // What the failed commit held is written again with the next one.
            state.touch_all();
            return Ok(());
        }
        LegacyIsolationsAdopted::Done { hosts: adopted }.emit();
        Ok(())
    }

    /// The isolation policy in force (as the loop sees it: a version staged is in force).
    pub fn policy(&self) -> Arc<PolicyVersion> {
        Arc::clone(&self.policy.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Makes `version` the policy in force. Staged until `commit`.
    pub fn put_policy(&self, version: PolicyVersion) -> Result<()> {
        self.stage(Slot::Policy, &version.version.to_be_bytes(), Some(serde_json::to_vec(&version)?));
        *self.policy.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(version);
        Ok(())
    }

    /// Every version of the policy, oldest first.
    pub fn policy_versions(&self) -> Result<Vec<PolicyVersion>> {
        let trees = self.trees()?;
        trees.policy
            .iter()
            .values()
            .map(|value| serde_json::from_slice(&value?).context("a version of the isolation policy is unreadable"))
            .collect()
    }

    /// One version of the policy, if there is one with that number.
    pub fn policy_version(&self, version: u64) -> Result<Option<PolicyVersion>> {
        let trees = self.trees()?;
        let Some(bytes) = self.read(&trees, Slot::Policy, &version.to_be_bytes())? else { return Ok(None) };
        Ok(Some(serde_json::from_slice(&bytes).context("a version of the isolation policy is unreadable")?))
    }

    /// Stages what changed in the engine's state since the last call, until `commit`.
    pub fn put_engine_changes(&self, state: &mut rules::EngineState) {
        for (key, value) in state.take_changes() {
            self.stage(Slot::Engine, &key, value);
        }
    }

    /// Returns the entry's key (the order it goes out in). Staged until `commit`.
    pub fn enqueue(&self, entry: &OutboxEntry) -> Result<u64> {
        let key = self.trees()?.db.generate_id()?;
        self.stage(Slot::Outbox, &key.to_be_bytes(), Some(entry.to_bytes()?));
        Ok(key)
    }

    /// Returns the entry's key, from the outbox's sequence. Staged until `commit`.
    pub fn enqueue_dead_letter(&self, entry: &DeadLetterEntry) -> Result<u64> {
        let key = self.trees()?.db.generate_id()?;
        self.stage(Slot::DeadLetters, &key.to_be_bytes(), Some(entry.to_bytes()?));
        Ok(key)
    }

    /// The key after the newest of the outbox and the dead letters (0 when both are empty).
    pub fn outbox_end(&self) -> Result<u64> {
        let trees = self.trees()?;
        let end = |tree: &sled::Tree| -> Result<u64> {
            Ok(tree.last()?.map_or(0, |(key, _)| outbox_key(&key).saturating_add(1)))
        };
        Ok(end(&trees.outbox)?.max(end(&trees.dead_letters)?))
    }

    /// Outbox entries with keys below `end`, oldest first.
    pub fn outbox_up_to(&self, end: u64) -> Result<Vec<(u64, OutboxEntry)>> {
        let trees = self.trees()?;
        trees.outbox
            .range(..end.to_be_bytes())
            .map(|item| {
                let (key, value) = item?;
                Ok((outbox_key(&key), OutboxEntry::from_bytes(&value)?))
            })
            .collect()
    }

    /// Dead letters with keys below `end`, oldest first.
    pub fn dead_letters_up_to(&self, end: u64) -> Result<Vec<(u64, DeadLetterEntry)>> {
        let trees = self.trees()?;
        trees.dead_letters
            .range(..end.to_be_bytes())
            .map(|item| {
                let (key, value) = item?;
                Ok((outbox_key(&key), DeadLetterEntry::from_bytes(&value)?))
            })
            .collect()
    }

    /// Removes sent entries. Not flushed: an entry sent again after a crash is refused by its
    /// agent as a stale generation.
    pub fn sent(&self, key: u64) -> Result<()> {
        let trees = self.trees()?;
        trees.outbox.remove(key.to_be_bytes())?;
        Ok(())
    }

    /// Removes a sent dead letter (one sent again after a crash is a harmless duplicate).
    pub fn dead_letter_sent(&self, key: u64) -> Result<()> {
        let trees = self.trees()?;
        trees.dead_letters.remove(key.to_be_bytes())?;
        Ok(())
    }

    /// Replaces a dead letter by a smaller one.
    pub fn replace_dead_letter(&self, key: u64, entry: &DeadLetterEntry) -> Result<()> {
        let trees = self.trees()?;
        trees.dead_letters.insert(key.to_be_bytes(), entry.to_bytes()?)?;
        Ok(())
    }

    /// Moves an outbox entry to the parked ones, with the reason (and makes it durable).
    pub fn park(&self, key: u64, reason: &str) -> Result<()> {
        let trees = self.trees()?;
        self.park_from(&trees.outbox, b'c', key, reason)
    }

    /// Moves a dead letter to the parked entries, with the reason (and makes it durable).
    pub fn park_dead_letter(&self, key: u64, reason: &str) -> Result<()> {
        let trees = self.trees()?;
        self.park_from(&trees.dead_letters, b'd', key, reason)
    }

    /// Parked entries are `kind` (`c` command, `d` dead letter), the reason's length (u32), the
    /// reason and the entry's bytes.
    fn park_from(&self, tree: &sled::Tree, kind: u8, key: u64, reason: &str) -> Result<()> {
        let trees = self.trees()?;
        let Some(entry) = tree.remove(key.to_be_bytes())? else { return Ok(()) };
        let mut bytes = vec![kind];
        bytes.extend_from_slice(&u32::try_from(reason.len()).unwrap_or(u32::MAX).to_be_bytes());
        bytes.extend_from_slice(reason.as_bytes());
        bytes.extend_from_slice(&entry);
        trees.parked.insert(key.to_be_bytes(), bytes)?;
        self.flush()
    }

    /// How many entries are parked.
    pub fn parked_count(&self) -> usize {
        self.trees().map_or(0, |trees| trees.parked.len())
    }

    /// Makes what was written directly (not staged) durable: the sender's and the API's writes.
    pub fn flush(&self) -> Result<()> {
        let trees = self.trees()?;
        trees.db.flush().context("cannot flush the state store")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::{DeadLetterEntry, HostRecord, HostState, OutboxEntry, Outgoing, Store};

    /// A new store in a scratch directory of its own (removed first), and the directory.
    fn scratch(name: &str) -> (std::path::PathBuf, Store) {
        let dir = std::env::temp_dir().join(format!("cordon-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir).unwrap();
        (dir, store)
    }

    #[test]
    fn each_slot_is_numbered_by_its_place_in_slots() {
        for (place, slot) in super::SLOTS.iter().enumerate() {
            assert_eq!(*slot as usize, place, "{slot:?}");
        }
    }

    #[test]
    fn staged_changes_are_read_back_and_kept_only_once_committed() {
        let (dir, store) = scratch("staged");
        let mut record = HostRecord::new("web-01", 0);
        record.state = super::HostState::Isolating;
        record.expires_at_ms = Some(5_000);
        store.put_host(None, &record).unwrap();
        assert_eq!(store.host("web-01").unwrap().as_ref(), Some(&record), "the loop reads its own change");
        assert!(store.due(10_000).unwrap().is_empty(), "not in sled before the commit");
        // Dropped uncommitted (as after a failed write): the store holds none of it.
        store.reopen().unwrap_or_else(|error| panic!("reopen: {error:#}"));
        assert_eq!(store.host("web-01").unwrap(), None);
        store.put_host(None, &record).unwrap();
        store.commit().unwrap();
        drop(store);
        let store = reopen(&dir).unwrap();
        assert_eq!(store.host("web-01").unwrap(), Some(record));
        assert_eq!(store.due(10_000).unwrap(), vec!["web-01".to_owned()]);
        assert_eq!(store.counts().by_state.get("isolating"), Some(&1));
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_deadline_index_follows_committed_records_and_is_read_from_them_at_open() {
        let (dir, store) = scratch("deadlines");
        let (web_01, web_02) = (isolated_until("web-01", 5_000), isolated_until("web-02", 3_000));
        let web_03 = isolated_until("web-03", 4_000);
        for record in [&web_01, &web_02, &web_03] {
            store.put_host(None, record).unwrap();
        }
        store.commit().unwrap();
        assert_eq!(store.due(10_000).unwrap(), ["web-02", "web-03", "web-01"], "earliest first");
        assert_eq!(store.due(3_999).unwrap(), ["web-02"]);
        // web-01's isolation extended, web-02's being lifted (its deadline kept on the record).
        let extended = isolated_until("web-01", 20_000);
        let mut releasing = web_02.clone();
        releasing.state = HostState::Releasing;
        store.put_host(Some(&web_01), &extended).unwrap();
        store.put_host(Some(&web_02), &releasing).unwrap();
        assert_eq!(store.due(10_000).unwrap(), ["web-02", "web-03", "web-01"], "staged changes are not due");
        store.commit().unwrap();
        assert_eq!(store.due(10_000).unwrap(), ["web-03"]);
        assert_eq!(store.due(20_000).unwrap(), ["web-03", "web-01"]);
        drop(store);
        // An earlier version kept the index in a tree of its own; a stale copy of it is dropped at
        // open, and the index is read from the records.
        let db = when_released(|| sled::open(dir.join("orchestrator.sled")), ToString::to_string).unwrap();
        let mut stale_key = 1_000_i64.to_be_bytes().to_vec();
        stale_key.extend_from_slice(b"web-02");
        db.open_tree("deadlines").unwrap().insert(stale_key, b"web-02").unwrap();
        // A damaged record does not keep the others from being watched.
        db.open_tree("hosts").unwrap().insert(b"web-04", b"{\"state\":\"isolat".to_vec()).unwrap();
        // Nor from being counted, on a store from before the counts were kept.
        db.open_tree("counts").unwrap().clear().unwrap();
        db.flush().unwrap();
        drop(db);
        let store = reopen(&dir).unwrap();
        assert_eq!(store.due(20_000).unwrap(), ["web-03", "web-01"]);
        let counts = store.counts().by_state;
        assert_eq!((counts.get("isolated"), counts.get("releasing")), (Some(&2), Some(&1)), "{counts:?}");
        let trees = store.trees().unwrap();
        assert!(!trees.db.tree_names().iter().any(|name| name.as_ref() == b"deadlines"), "the old tree is dropped");
        drop((trees, store));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_host_changed_twice_in_one_commit_is_indexed_as_it_last_is() {
        let (dir, store) = scratch("twice");
        let isolated = |deadline: i64| isolated_until("web-01", deadline);
        let (first, second, third) = (isolated(5_000), isolated(6_000), isolated(7_000));
        store.put_host(None, &first).unwrap();
        store.commit().unwrap();
        store.put_host(Some(&first), &second).unwrap();
        store.put_host(Some(&second), &third).unwrap();
        store.commit().unwrap();
        assert!(store.due(6_999).unwrap().is_empty(), "neither earlier deadline stays");
        assert_eq!(store.due(7_000).unwrap(), ["web-01"]);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn hosts_awaiting_an_answer_are_indexed_from_committed_records_and_at_open() {
        let (dir, store) = scratch("awaiting");
        let sent = |host: &str, state: HostState| {
            let mut record = HostRecord::new(host, 0);
            record.state = state;
            record.command_issued_at_ms = Some(1_000);
            record
        };
        let isolating = sent("web-01", HostState::Isolating);
        let releasing = sent("web-02", HostState::Releasing);
        // A command sent, but the host neither isolating nor releasing: nothing to resend.
        let released = sent("web-03", HostState::Released);
        for record in [&isolating, &releasing, &released] {
            store.put_host(None, record).unwrap();
        }
        assert!(store.awaiting_answer().unwrap().is_empty(), "not before the commit");
        store.commit().unwrap();
        assert_eq!(store.awaiting_answer().unwrap(), ["web-01", "web-02"]);
        // web-01's agent answered.
        let mut answered = isolating.clone();
        answered.state = HostState::Isolated;
        answered.command_issued_at_ms = None;
        store.put_host(Some(&isolating), &answered).unwrap();
        store.commit().unwrap();
        assert_eq!(store.awaiting_answer().unwrap(), ["web-02"]);
        drop(store);
        let store = reopen(&dir).unwrap();
        assert_eq!(store.awaiting_answer().unwrap(), ["web-02"], "read from the records at open");
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn agents_not_marked_stale_are_indexed_by_when_they_were_last_heard_from() {
        let (dir, store) = scratch("heard");
        let heard = |host: &str, at_ms: i64, stale: bool| {
            let mut record = HostRecord::new(host, 0);
            record.last_seen_ms = Some(at_ms);
            record.agent_stale = stale;
            record
        };
        let (web_01, web_02) = (heard("web-01", 1_000, false), heard("web-02", 5_000, false));
        let (web_03, web_04) = (heard("web-03", 500, true), HostRecord::new("web-04", 0));
        for record in [&web_01, &web_02, &web_03, &web_04] {
            store.put_host(None, record).unwrap();
        }
        store.commit().unwrap();
        // web-03 is marked stale already; web-04's agent was never heard from.
        assert_eq!(store.heard_from_before(2_000).unwrap(), ["web-01"]);
        assert_eq!(store.heard_from_before(5_000).unwrap(), ["web-01"], "strictly before");
        assert_eq!(store.heard_from_before(9_000).unwrap(), ["web-01", "web-02"], "the longest silent first");
        // web-01 reports again; web-02 is marked stale.
        let again = heard("web-01", 8_000, false);
        let stale = heard("web-02", 5_000, true);
        store.put_host(Some(&web_01), &again).unwrap();
        store.put_host(Some(&web_02), &stale).unwrap();
        store.commit().unwrap();
        assert!(store.heard_from_before(8_000).unwrap().is_empty());
        drop(store);
        let store = reopen(&dir).unwrap();
        assert_eq!(store.heard_from_before(9_000).unwrap(), ["web-01"], "read from the records at open");
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_jobs_select_exactly_the_hosts_lifecycle_acts_on() {
        use super::super::lifecycle::{check_stale, resend_due, Effects};
        let (dir, store) = scratch("selections");
        let (after_ms, now) = (2_000, 10_000);
        let mut records = Vec::new();
        for last_seen in [now - after_ms - 1, now - after_ms, now - after_ms + 1] {
            for stale in [false, true] {
                let mut record = HostRecord::new(&format!("heard-{last_seen}-{stale}"), 0);
                (record.last_seen_ms, record.agent_stale) = (Some(last_seen), stale);
                records.push(record);
            }
        }
        for state in HostState::ALL {
            for issued in [None, Some(1_000)] {
                let mut record = HostRecord::new(&format!("sent-{}-{issued:?}", state.name()), 0);
                (record.state, record.command_issued_at_ms) = (state, issued);
                record.last_command = Some(cordon_wire::Action::Release { reason: "r".into() });
                records.push(record);
            }
        }
        for record in &records {
            store.put_host(None, record).unwrap();
        }
        store.commit().unwrap();
        let acted_on = |acts: &dyn Fn(&mut HostRecord) -> bool| -> Vec<String> {
            let mut hosts: Vec<String> =
                records.iter().filter(|record| acts(&mut (*record).clone())).map(|r| r.host.clone()).collect();
            hosts.sort();
            hosts
        };
        let mut silent = store.heard_from_before(now - after_ms).unwrap();
        silent.sort();
        let marked = |record: &mut HostRecord| check_stale(record, after_ms, now) != Effects::default();
        assert_eq!(silent, acted_on(&marked));
        assert_eq!(silent, [format!("heard-{}-false", now - after_ms - 1)]);
        // Resent whenever its wait is over (a wait of 0 here): the index holds every candidate.
        let awaiting = store.awaiting_answer().unwrap();
        assert_eq!(awaiting, acted_on(&|record| resend_due(record, 0, now).is_some()));
        assert_eq!(awaiting.len(), 2, "{awaiting:?}");
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_policy_is_seeded_once_and_a_new_version_is_in_force_only_once_committed() {
        let (dir, store) = scratch("policy");
        let seed = store.policy();
        assert_eq!((seed.version, seed.author.as_str()), (1, "cordon"));
        assert_eq!(seed.policy.profile_for(&[]).automatic_duration_seconds, 5 * 3_600);
        let mut next = (*seed).clone();
        next.version = 2;
        next.policy.profiles[0].automatic_duration_seconds = 600;
        store.put_policy(next.clone()).unwrap();
        assert_eq!(store.policy().version, 2, "the loop acts on what it staged");
        store.reopen().unwrap_or_else(|error| panic!("reopen: {error:#}"));
        assert_eq!(store.policy().version, 1, "an uncommitted version is not in force after a failed write");
        store.put_policy(next.clone()).unwrap();
        store.commit().unwrap();
        drop(store);
        let store = reopen(&dir).unwrap();
        assert_eq!(*store.policy(), next);
        let versions: Vec<u64> = store.policy_versions().unwrap().iter().map(|v| v.version).collect();
        assert_eq!(versions, vec![1, 2], "the seed is written once, not at every open");
        assert_eq!(store.policy_version(1).unwrap().map(|v| v.policy), Some(seed.policy.clone()));
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A reopen that finds the file lock still held (sled's flusher lets go a moment after the
    /// last handle is dropped) waits for it, at most 2 s; a lock held longer is an error naming it.
    #[test]
    fn a_reopen_waits_for_the_file_lock_and_no_longer_than_2_s() {
        let (dir, store) = scratch("lock");
        drop(store);
        let holder = super::Trees::open_when_released(&dir).unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            drop(holder);
        });
        let started = std::time::Instant::now();
        let reopened = super::Trees::open_when_released(&dir);
        release.join().unwrap();
        assert!(reopened.is_ok(), "{:?}", reopened.err());
        assert!(started.elapsed() >= std::time::Duration::from_millis(250), "it waited for the holder");
        let holder = reopened.unwrap();
        let started = std::time::Instant::now();
        let error = format!("{:#}", super::Trees::open_when_released(&dir).err().expect("the lock is held"));
        assert!(error.contains("could not acquire lock"), "{error}");
        assert!(started.elapsed() < std::time::Duration::from_secs(4), "bounded");
        drop(holder);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_fleet_shows_what_is_staged_and_keeps_in_step_after_the_first_look() {
        let (dir, store) = scratch("fleet");
        let record = HostRecord::new("web-01", 0);
        store.put_host(None, &record).unwrap();
        let state = |store: &Store| store.with_fleet(|fleet| fleet.get("web-01").map(|s| s.state)).unwrap();
        assert_eq!(state(&store), Some(super::HostState::NotIsolated), "the first look sees what is staged");
        store.commit().unwrap();
        let mut isolating = record.clone();
        isolating.state = super::HostState::Isolating;
        store.put_host(Some(&record), &isolating).unwrap();
        assert_eq!(state(&store), Some(super::HostState::Isolating), "kept in step by put_host");
        store.reopen().unwrap_or_else(|error| panic!("reopen: {error:#}"));
        assert_eq!(state(&store), Some(super::HostState::NotIsolated), "after a failed write: what is durable");
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_engine_state_kept_whole_is_read_and_then_kept_by_entries() {
        let (dir, store) = scratch("engine");
        // As a version that kept hosts' isolations in the engine's state wrote it: web-01 is
        // isolated, web-02 was released since.
        let whole = r#"{"seen":[7],"thresholds":{},"escalations":{},"recent_isolations":[5],"active":{
            "web-01":{"mode":"manual","deadline_ms":null,"rules":{"worm":0}},
            "web-02":{"mode":"manual","deadline_ms":null,"rules":{"worm":0}}}}"#;
        let mut isolated = HostRecord::new("web-01", 0);
        isolated.state = HostState::Isolated;
        isolated.mode = Some(cordon_wire::IsolationMode::Manual);
        let released = HostRecord { state: HostState::Released, ..HostRecord::new("web-02", 0) };
        store.put_host(None, &isolated).unwrap();
        store.put_host(None, &released).unwrap();
        store.commit().unwrap();
        store.trees().unwrap().db.insert(super::ENGINE_KEY, whole.as_bytes()).unwrap();
        let state = store.engine_state().unwrap();
        let mut expected: rules::EngineState = serde_json::from_str(whole).unwrap();
        expected.take_legacy_isolations();
        assert_eq!(state, expected);
        assert_eq!(store.host("web-01").unwrap().unwrap().isolated_by, BTreeMap::from([("worm".to_owned(), 0)]));
        assert_eq!(store.host("web-02").unwrap().unwrap(), released, "not isolated: nothing to keep");
        drop(store);
        let store = reopen(&dir).unwrap();
        assert!(store.trees().unwrap().db.get(super::ENGINE_KEY).unwrap().is_none(), "the whole copy is gone");
        assert!(store.trees().unwrap().engine.iter().keys().all(|key| key.unwrap()[0] != b'a'), "never written again");
        let mut state = store.engine_state().unwrap();
        assert_eq!(state, expected);
        // From now on only what changes is written.
        state.prune(1_000_000, 10);
        store.put_engine_changes(&mut state);
        store.commit().unwrap();
        let mut pruned: rules::EngineState = serde_json::from_str(r#"{"seen":[7],"thresholds":{},"escalations":{},"recent_isolations":[]}"#).unwrap();
        pruned.take_legacy_isolations();
        assert_eq!(store.engine_state().unwrap(), pruned);
        // An old isolation kept by entries is adopted the same way; a host whose record cannot be
        // read (damaged) is left out, and the state is read all the same.
        let record = HostRecord { host: "web-03".into(), ..isolated.clone() };
        store.put_host(None, &record).unwrap();
        store.commit().unwrap();
        store.trees().unwrap().hosts.insert(b"web-04", &b"{not a record"[..]).unwrap();
        let entry = br#"{"mode":"automatic","deadline_ms":9,"rules":{"strike":60000}}"#;
        store.trees().unwrap().engine.insert(b"aweb-03", &entry[..]).unwrap();
        store.trees().unwrap().engine.insert(b"aweb-04", &entry[..]).unwrap();
        assert_eq!(store.engine_state().unwrap(), pruned, "read despite the damaged record");
        assert_eq!(store.host("web-03").unwrap().unwrap().isolated_by, BTreeMap::from([("strike".to_owned(), 60_000)]));
        assert!(store.trees().unwrap().engine.get(b"aweb-03").unwrap().is_none());
        assert!(store.host("web-04").is_err(), "still damaged, untouched");
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn retention_removes_old_audit_entries_keeps_the_newest_per_host_and_old_api_calls() {
        use super::{ApiCall, AuditEntry, HostState, Retention, RetentionOutcome};
        let (dir, store) = scratch("retention");
        let entry = |host: &str, at_ms: i64| AuditEntry {
            at_ms,
            host: host.into(),
            from: HostState::NotIsolated,
            to: HostState::Isolating,
            by: "test".into(),
            event_id: None,
            generation: 1,
            why: format!("at {at_ms}"),
            shadow: false,
        };
        // web-01: 5 old entries and 20 recent ones; web-02 (a prefix of no other): 3 recent.
        for at in (0..5).chain(1_000..1_020) {
            store.audit(&entry("web-01", at)).unwrap();
        }
        for at in 1_000..1_003 {
            store.audit(&entry("web-02", at)).unwrap();
        }
        store.commit().unwrap();
        for at in [10, 20, 1_500] {
            let call = ApiCall {
                at_ms: at,
                caller: "c".into(),
                method: "GET".into(),
                path: "/".into(),
                status: 200,
            };
            store.record_api_call(&call).unwrap();
        }
        let retention = Retention { audit_ms: 500, audit_per_host: 10, api_calls_ms: 500 };
        let outcome = store.apply_retention(&retention, 1_100).unwrap();
        assert_eq!(outcome, RetentionOutcome { audit_entries: 15, api_calls: 2 });
        let kept: Vec<i64> = store.audit_of("web-01").unwrap().iter().map(|e| e.at_ms).collect();
        assert_eq!(kept, (1_010..1_020).collect::<Vec<_>>(), "the newest 10 of web-01");
        assert_eq!(store.audit_of("web-02").unwrap().len(), 3);
        assert_eq!(store.api_calls().unwrap().iter().map(|c| c.at_ms).collect::<Vec<_>>(), vec![1_500]);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Opens the store again once the last instance's sled threads have let go of its lock
    /// (they hold it a moment after the drop; a test reopening at once can meet it).
    fn reopen(dir: &std::path::Path) -> anyhow::Result<Store> {
        when_released(|| Store::open(dir), |error| format!("{error:#}"))
    }

    /// `open`, tried again while the last handle's file lock is still held (at most 10 s).
    fn when_released<T, E>(open: impl Fn() -> Result<T, E>, say: impl Fn(&E) -> String) -> Result<T, E> {
        let started = std::time::Instant::now();
        loop {
            match open() {
                Err(error) if say(&error).contains("could not acquire lock") && started.elapsed().as_secs() < 10 => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    /// `host`'s record, isolated until `deadline`.
    fn isolated_until(host: &str, deadline: i64) -> HostRecord {
        let mut record = HostRecord::new(host, 0);
        (record.state, record.expires_at_ms) = (HostState::Isolated, Some(deadline));
        record
    }

    #[test]
    fn a_store_that_lost_its_contents_is_refused_until_the_operator_says_so() {
        let dir = std::env::temp_dir().join(format!("cordon-store-identity-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        drop(Store::open(&dir).unwrap());
        let id = std::fs::read_to_string(dir.join("store-id")).unwrap();
        drop(reopen(&dir).unwrap());
        assert_eq!(std::fs::read_to_string(dir.join("store-id")).unwrap(), id, "the same store, the same id");
        // The store's files are gone (or unreadable): an empty store must not start silently.
        std::fs::remove_dir_all(dir.join("orchestrator.sled")).unwrap();
        let error = format!("{:#}", reopen(&dir).err().expect("refused"));
        assert!(error.contains("has lost its contents") && error.contains("orchestrator.sled"), "{error}");
        assert!(error.contains("A lost or corrupt state store"), "{error}");
        // Removing the copy is how an operator says "start empty".
        std::fs::remove_file(dir.join("store-id")).unwrap();
        drop(reopen(&dir).unwrap());
        assert_ne!(std::fs::read_to_string(dir.join("store-id")).unwrap(), id, "a new store, a new id");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn made_up_hosts_are_not_cached_and_known_ones_are() {
        let (dir, store) = scratch("tags");
        for i in 0..1_000 {
            assert!(store.for_rules(&format!("made-up-{i}")).unwrap().is_none());
        }
        assert_eq!(store.cached_for_rules(), 0);
        let mut record = HostRecord::new("web-01", 0);
        record.operator_tags = vec!["plc".into()];
        record.agent_tags = vec!["safety-critical".into()];
        store.put_host(None, &record).unwrap();
        let known = store.for_rules("web-01").unwrap().unwrap();
        assert_eq!(known.operator_tags, vec!["plc".to_owned()], "never the agent's tags");
        assert_eq!(known.isolation, None);
        assert_eq!(store.cached_for_rules(), 1);
        // Read from the record once the memory is gone (a store opened again).
        let mut isolated = record.clone();
        isolated.state = HostState::Isolated;
        isolated.mode = Some(cordon_wire::IsolationMode::Manual);
        isolated.isolated_by = BTreeMap::from([("rules r".to_owned(), 0)]);
        store.put_host(Some(&record), &isolated).unwrap();
        store.commit().unwrap();
        store.load_memory().unwrap();
        assert_eq!(store.cached_for_rules(), 0);
        let known = store.for_rules("web-01").unwrap().unwrap();
        assert_eq!(known.isolation.as_ref().map(|isolation| &isolation.isolated_by), Some(&isolated.isolated_by));
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn outbox_entries_round_trip_and_refuse_truncation() {
        let sealed = Outgoing::Sealed(br#"{"payload":"{}","signature":"x"}"#.to_vec());
        let unsigned = Outgoing::Unsigned(r#"{"version":1,"command_id":"web-01-1"}"#.into());
        for command in [sealed, unsigned] {
            let entry = OutboxEntry { host: "web-01".into(), command };
            let bytes = entry.to_bytes().unwrap();
            assert_eq!(OutboxEntry::from_bytes(&bytes).unwrap(), entry);
            assert!(OutboxEntry::from_bytes(&bytes[..5]).is_err());
        }
        assert!(OutboxEntry::from_bytes(&[0]).is_err());
        let letter = DeadLetterEntry { key: vec![7; 70_000], record: b"{}".to_vec() };
        let bytes = letter.to_bytes().unwrap();
        assert_eq!(DeadLetterEntry::from_bytes(&bytes).unwrap(), letter);
        assert!(DeadLetterEntry::from_bytes(&bytes[..100]).is_err());
    }
}
