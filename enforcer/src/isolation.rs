//! What the enforcer does, step by step: isolate, update, release, report, restore and expire.
//! Joins the kernel (`bpf`), the severing pass (`sever`) and the durable record (`store`).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use cordon_wire::spec::{Direction, Exclusion, Network, PortRange, Protocol};
use serde::Serialize;

use crate::bpf::{self, Counters, Enforcement, Pins};
use enforcer_common::{AGENT_SOCKET_MARK, EXEMPT_SOCKET_MARK};
use crate::exclusion::comm_key;
use cordon_wire::rule_table;
use crate::sever::{self, SeverReport};
use crate::store::{AuditEntry, IsolationRecord, Mode, Store};

pub use cordon_wire::ISOLATED_TAG;

/// Where an isolation applies and where its state lives.
#[derive(Clone, Debug)]
pub struct Target {
    pub cgroup: PathBuf,
    pub pins: Pins,
    pub state_dir: PathBuf,
}

/// What the caller asks for.
#[derive(Clone, Debug, Default)]
pub struct IsolateRequest {
    pub duration: Option<Duration>,
    pub exclusions: Vec<Exclusion>,
    pub allowed_processes: Vec<String>,
    pub allow_dns: bool,
    pub allow_dhcp: bool,
    pub reason: Option<String>,
    pub interfaces: Vec<String>,
    /// The agent's own management channel (its Kafka brokers), always allowed.
    pub management: Vec<Exclusion>,
    /// Who asked: `cli`, `agent`, a command id.
    pub actor: String,
    /// The generation of the command this carries out (none from the command line): recorded in
    /// the same write as the isolation.
    pub command_generation: Option<u64>,
    /// The agent's process, whose sockets alone may use the management channel: this process
    /// when the agent isolates; `None` from the command line, which then finds the running agent.
    pub agent_tgid: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct IsolateOutcome {
    pub updated_live: bool,
    pub severed: SeverReport,
    pub exempt_processes: usize,
    pub exempt_sockets_marked: usize,
    pub record: IsolationRecord,
}

/// Held while the kernel state or the record changes: the command line and the agent may act
/// at the same moment (an isolate while the agent arms or lifts), and every change must see the
/// state the previous one left. An exclusive `flock` on `<state dir>/enforcer.lock`.
pub struct ChangeLock {
    _file: std::fs::File,
}

pub fn lock_changes(target: &Target) -> Result<ChangeLock> {
    std::fs::create_dir_all(&target.state_dir)
        .with_context(|| format!("cannot create state directory {}", target.state_dir.display()))?;
    let path = target.state_dir.join("enforcer.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock on a descriptor we own; released when the file is closed.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot lock {}", path.display()));
    }
    Ok(ChangeLock { _file: file })
}

/// Clocks, read in one place.
pub fn now_unix_ms() -> i64 {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

/// The clock the eBPF programs hold deadlines on (`bpf_ktime_get_coarse_ns`), read the same way.
pub fn now_coarse_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the local timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// The kernel-clock deadline matching a wall-clock deadline (the programs read the monotonic
/// clock, which no wall-clock change can move).
fn kernel_deadline(expires_at_unix_ms: Option<i64>) -> u64 {
    match expires_at_unix_ms {
        None => 0,
        Some(deadline) => {
            let remaining_ms = u64::try_from(deadline.saturating_sub(now_unix_ms())).unwrap_or(0);
            // Never 0 (which means "manual"): an already-due deadline becomes "now".
            now_coarse_ns().saturating_add(remaining_ms.saturating_mul(1_000_000)).max(1)
        }
    }
}

/// `out,tcp,ADDRESS,PORT` for each management endpoint's address: what keeps the channel open.
pub fn management_exclusions(addresses: &[SocketAddr]) -> Vec<Exclusion> {
    let mut exclusions = Vec::new();
    for address in addresses {
        let Ok(port) = PortRange::single(address.port()) else { continue };
        let exclusion = Exclusion::new(Direction::Out, Protocol::Tcp, Network::host(address.ip()), Some(port))
            .expect("TCP takes ports");
        if !exclusions.contains(&exclusion) {
            exclusions.push(exclusion);
        }
    }
    exclusions
}

/// DNS to the resolvers of `/etc/resolv.conf` that are not on this host (loopback is always
/// open): part of the management channel, so the agent (and only the agent) can still resolve
/// its brokers' names while isolated.
pub fn agent_dns_exclusions() -> Vec<Exclusion> {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let remote: Vec<IpAddr> = resolvers(&text).into_iter().filter(|ip| !ip.is_loopback()).collect();
    dns_exclusions(&remote)
}

/// Resolvers named in /etc/resolv.conf.
pub fn resolvers(resolv_conf: &str) -> Vec<IpAddr> {
    resolv_conf
        .lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().split('%').next()?.parse().ok())
        .collect()
}

fn dns_exclusions(resolvers: &[IpAddr]) -> Vec<Exclusion> {
    resolvers
        .iter()
        .flat_map(|resolver| {
            let dns = PortRange::single(53).expect("53 is a port");
            [Protocol::Udp, Protocol::Tcp].map(|protocol| {
                Exclusion::new(Direction::Out, protocol, Network::host(*resolver), Some(dns))
                    .expect("UDP and TCP take ports")
            })
        })
        .collect()
}


/// Every exclusion the kernel enforces for a record.
pub struct EffectiveExclusions {
    /// For every socket: the user's, and DNS and DHCP when asked for.
    pub shared: Vec<Exclusion>,
    /// For the agent's sockets only: its management channel.
    pub management: Vec<Exclusion>,
}

/// Every exclusion the kernel enforces for `record`.
pub fn effective_exclusions(record: &IsolationRecord) -> EffectiveExclusions {
    let mut shared = record.exclusions.clone();
    if record.allow_dns {
        let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        shared.extend(dns_exclusions(&resolvers(&text)));
    }
    if record.allow_dhcp {
        shared.extend(rule_table::dhcp_exclusions());
    }
    EffectiveExclusions { shared, management: record.management.clone() }
}

/// Isolates the target, or updates the isolation in force without ever opening it.
pub fn isolate(target: &Target, request: &IsolateRequest) -> Result<IsolateOutcome> {
    let _lock = lock_changes(target)?;
    // Opening the store (sled) takes as long as attaching the programs: the previous record is
    // read on another thread while the kernel starts enforcing, and the record completed after
    // (its change sequence number, which the kernel holds only to be shown, is written last).
    std::thread::scope(|scope| {
        let reading = scope.spawn(|| -> Result<(Store, Option<IsolationRecord>)> {
            let store = Store::open(&target.state_dir)?;
            let previous = store.current()?;
            Ok((store, previous))
        });
        let now = now_unix_ms();
        let expires_at_unix_ms =
            request.duration.map(|d| now.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)));
        let mut record = IsolationRecord {
            version: IsolationRecord::new_version(),
            mode: if request.duration.is_some() { Mode::Automatic } else { Mode::Manual },
            started_at_unix_ms: now,
            expires_at_unix_ms,
            reason: request.reason.clone(),
            exclusions: request.exclusions.clone(),
            management: request.management.clone(),
            allowed_processes: request.allowed_processes.clone(),
            allow_dns: request.allow_dns,
            allow_dhcp: request.allow_dhcp,
            cgroup: target.cgroup.clone(),
            interfaces: request.interfaces.clone(),
            change_seq: 0,
        };
        let before = Before::read(&target.pins);
        let agent = request.agent_tgid.or_else(|| crate::health::running_agent(&target.state_dir));
        let applied = apply_record(target, &record, before, agent);
        let read = reading.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        let outcome = applied?;
        let (store, previous) = match read {
            Ok(read) => read,
            Err(error) => {
                before.roll_back(&target.pins);
                return Err(
                    error.context("the isolation was rolled back because its record could not be read")
                );
            }
        };
        record.change_seq = previous.as_ref().map_or(0, |p| p.change_seq) + 1;
        if let Some(previous) = previous.as_ref().filter(|_| before.installed) {
            record.started_at_unix_ms = previous.started_at_unix_ms;
        }
        let updated_live = before.installed && previous.is_some();
        let detail = match record.expires_at_unix_ms {
            Some(deadline) => format!("automatic until {}", format_time(deadline)),
            None => "manual".to_owned(),
        };
        let entry = AuditEntry {
            // When the isolation took effect (the programs in force), not when the change began.
            at_unix_ms: now_unix_ms(),
            event: if updated_live { "updated" } else { "isolated" }.into(),
            actor: request.actor.clone(),
            detail: format!("{detail}; reason: {}", record.reason.as_deref().unwrap_or("none given")),
            command_generation: request.command_generation,
            expires_at_unix_ms: record.expires_at_unix_ms,
        };
        let recorded = bpf::set_change_seq(&target.pins, record.change_seq)
            .and_then(|()| store.set_current(&record, request.command_generation, Some(&entry)));
        if let Err(error) = recorded {
            before.roll_back(&target.pins);
            return Err(error.context("the isolation was rolled back because it could not be recorded"));
        }
        Ok(IsolateOutcome { updated_live, record, ..outcome })
    })
}

/// What the pins held before a change, so a failed change can go back to exactly that.
#[derive(Clone, Copy)]
struct Before {
    installed: bool,
    armed: bool,
}

impl Before {
    fn read(pins: &Pins) -> Before {
        Before { installed: pins.installed(), armed: pins.armed() }
    }

    /// Undoes an install (back to armed or to nothing); a live update needs no undoing, since it
    /// never opened anything.
    fn roll_back(self, pins: &Pins) {
        if !self.installed {
            let _ = bpf::roll_back(pins, self.armed);
        }
    }
}

/// Installs or updates the kernel state for `record`, marks exempt sockets and the agent's
/// (`agent`: its process), and severs.
fn apply_record(
    target: &Target,
    record: &IsolationRecord,
    before: Before,
    agent: Option<u32>,
) -> Result<IsolateOutcome> {
    let exclusions = effective_exclusions(record);
    let tables = rule_table::compile(&exclusions.shared, &exclusions.management)?;
    let exempt_names: Vec<_> = record.allowed_processes.iter().map(|n| comm_key(n)).collect();
    let pids = sever::cgroup_pids(&target.cgroup);
    let exempt_tgids = sever::processes_named(&pids, &record.allowed_processes);
    let enforcement = Enforcement {
        tables: &tables,
        exempt_names: &exempt_names,
        exempt_tgids: &exempt_tgids,
        expires_at_coarse_ns: kernel_deadline(record.expires_at_unix_ms),
        active: true,
        agent_tgid: agent.unwrap_or(0),
    };
    // Mark what exempt processes and the agent already hold before anything is enforced.
    let exempt_sockets_marked = sever::mark_existing_sockets(&exempt_tgids, EXEMPT_SOCKET_MARK);
    if let Some(agent) = agent {
        sever::mark_existing_sockets(&[agent], AGENT_SOCKET_MARK);
    }
    let updated_live = before.installed;
    if updated_live {
        bpf::LiveMaps::open(&target.pins)?.apply(&enforcement, record.change_seq)?;
    } else {
        bpf::install(&target.pins, &target.cgroup, &record.interfaces, &enforcement, record.change_seq)?;
    }
    // The agent's connections to its brokers are kept (marked above); another process's are cut.
    let severed = match sever::sever_connections(&target.cgroup, &exclusions.shared, &exclusions.management) {
        Ok(report) => report,
        Err(error) => {
            before.roll_back(&target.pins);
            return Err(
                error.context("existing connections could not be severed, so the isolation was rolled back")
            );
        }
    };
    Ok(IsolateOutcome {
        updated_live,
        severed,
        exempt_processes: exempt_tgids.len(),
        exempt_sockets_marked,
        record: record.clone(),
    })
}

/// Attaches again whatever link of the isolation in force someone on the host detached (its pin
/// kept, so `status` alone would not see it), and records that in the audit trail; returns the
/// links re-attached.
pub fn repair_detached_links(target: &Target) -> Result<Vec<String>> {
    let _lock = lock_changes(target)?;
    if !target.pins.installed() {
        return Ok(Vec::new());
    }
    let detached = bpf::detached_links(&target.pins)?;
    if detached.is_empty() {
        return Ok(detached);
    }
    bpf::reattach(&target.pins, &target.cgroup, &detached)?;
    audit(
        target,
        "tampered",
        "agent",
        &format!("link(s) {} detached on the host, not by cordon; attached again", detached.join(", ")),
    )?;
    Ok(detached)
}

/// Guards `interfaces` that the isolation in force does not guard yet (they appeared while the
/// host was isolated) and records them; returns those newly guarded.
pub fn guard_new_interfaces(target: &Target, interfaces: &[String]) -> Result<Vec<String>> {
    let _lock = lock_changes(target)?;
    if !target.pins.installed() {
        return Ok(Vec::new());
    }
    let store = Store::open(&target.state_dir)?;
    let Some(mut record) = store.current()? else { return Ok(Vec::new()) };
    let new = bpf::guard_new_interfaces(&target.pins, interfaces)?;
    if new.is_empty() {
        return Ok(new);
    }
    for interface in &new {
        if !record.interfaces.contains(interface) {
            record.interfaces.push(interface.clone());
        }
    }
    store.set_current(&record, None, None)?;
    drop(store);
    audit(target, "updated", "agent", &format!("ICMP echo guard added to new interface(s) {}", new.join(", ")))?;
    Ok(new)
}

/// Brings the management channel of the isolation in force to `management`, live (the agent
/// learned other broker addresses); false when nothing is isolated or nothing changes.
pub fn update_management(target: &Target, management: &[Exclusion]) -> Result<bool> {
    let _lock = lock_changes(target)?;
    if !target.pins.installed() {
        return Ok(false);
    }
    let store = Store::open(&target.state_dir)?;
    let Some(mut record) = store.current()? else { return Ok(false) };
    if record.management == management {
        return Ok(false);
    }
    record.management = management.to_vec();
    apply_record(target, &record, Before::read(&target.pins), Some(std::process::id()))?;
    store.set_current(&record, None, None)?;
    drop(store);
    audit(target, "updated", "agent", "management channel updated (broker addresses)")?;
    Ok(true)
}

/// Loads, verifies and pins the programs without attaching them ("armed"): no cost to any
/// packet, and a later isolation only attaches (about a millisecond) instead of loading
/// (about a hundred). Returns false when the programs were already loaded.
pub fn arm(target: &Target) -> Result<bool> {
    let _lock = lock_changes(target)?;
    if target.pins.loaded() {
        return Ok(false);
    }
    let tables = rule_table::RuleTables::default();
    let enforcement = Enforcement {
        tables: &tables,
        exempt_names: &[],
        exempt_tgids: &[],
        expires_at_coarse_ns: 0,
        active: false,
        agent_tgid: 0,
    };
    bpf::arm(&target.pins, &enforcement)?;
    audit(target, "armed", "cli", "programs loaded, not attached")?;
    Ok(true)
}

/// Lifts the isolation: enforcement off, programs detached, pins removed, record closed.
/// Returns whether anything was isolated.
/// `command_generation`: the generation of the command this carries out (none from the command
/// line or the agent's own deadline), recorded in the same write as the release.
pub fn release(target: &Target, actor: &str, event: &str, command_generation: Option<u64>) -> Result<bool> {
    let _lock = lock_changes(target)?;
    release_locked(target, actor, event, command_generation)
}

fn release_locked(target: &Target, actor: &str, event: &str, command_generation: Option<u64>) -> Result<bool> {
    let was_installed = target.pins.root().exists();
    bpf::uninstall(&target.pins)?;
    let store = Store::open(&target.state_dir)?;
    let had_record = store.current()?.is_some();
    let entry = (was_installed || had_record).then(|| AuditEntry {
        at_unix_ms: now_unix_ms(),
        event: event.into(),
        actor: actor.into(),
        detail: String::new(),
        command_generation,
        expires_at_unix_ms: None,
    });
    store.clear_current(command_generation, entry.as_ref())?;
    Ok(entry.is_some())
}

/// What `status` reports.
#[derive(Debug, Serialize)]
#[expect(clippy::struct_excessive_bools, reason = "a report: each flag is a separate fact for the operator")]
pub struct Status {
    pub isolated: bool,
    pub mode: Option<Mode>,
    pub expires_at: Option<String>,
    #[serde(skip)]
    pub expires_at_unix_ms: Option<i64>,
    pub started_at: Option<String>,
    pub reason: Option<String>,
    pub tags: Vec<&'static str>,
    pub exclusions: Vec<Exclusion>,
    pub management: Vec<Exclusion>,
    pub allowed_processes: Vec<String>,
    pub allow_dns: bool,
    pub allow_dhcp: bool,
    pub counters: Counters,
    pub cgroup: PathBuf,
    pub pin_dir: PathBuf,
    pub pinned_links: Vec<String>,
    /// Programs attached but not isolating (see `arm`).
    pub armed: bool,
    /// The change in force (the agent's own sequence number, as the kernel holds it).
    pub change_seq: Option<u64>,
    /// The generation of the last cordon command applied (0 when none was): what the agent's
    /// reports carry, and what a replayed command must beat.
    pub last_command_generation: u64,
    /// The last changes, oldest first (from the audit trail).
    pub history: Vec<AuditEntry>,
    /// Something is recorded or pinned that does not match what is enforced (e.g. the kernel
    /// deadline passed while the agent was down, or a reboot removed the pins).
    pub attention: Option<String>,
    /// The recorded isolation's programs and links are pinned (true when none is recorded).
    pub pins_intact: bool,
    /// The agent's own health (filled by the `status` command; not known to this module).
    pub agent: Option<crate::health::AgentView>,
}

pub fn status(target: &Target) -> Result<Status> {
    let store = Store::open(&target.state_dir)?;
    let recorded = Recorded {
        record: store.current()?,
        history: store.recent_audit(5)?,
        last_command_generation: store.last_command_generation()?,
    };
    drop(store);
    status_of(target, recorded)
}

/// What the store holds of the isolation, for [`status_of`].
pub struct Recorded {
    pub record: Option<IsolationRecord>,
    /// The last changes, oldest first (none when the caller has no use for them).
    pub history: Vec<AuditEntry>,
    pub last_command_generation: u64,
}

impl Recorded {
    /// What the store holds right after a command was carried out: `record` in force (none
    /// after a release), the command's generation the last applied.
    pub fn after_command(record: Option<IsolationRecord>, generation: u64) -> Recorded {
        Recorded { record, history: Vec::new(), last_command_generation: generation }
    }
}

/// [`status`] from what the store holds, as the caller knows it (the agent, right after it
/// carried out a command, without opening the store again): reads only the kernel.
pub fn status_of(target: &Target, recorded: Recorded) -> Result<Status> {
    let Recorded { record, history, last_command_generation } = recorded;
    let kernel = bpf::read_state(&target.pins)?;
    let now_coarse = now_coarse_ns();
    let enforcing = kernel.as_ref().is_some_and(|k| k.config.enforcing_at(now_coarse) && !k.links.is_empty());
    let armed = target.pins.armed();
    let earlier_layouts = target.pins.other_layouts();
    let attention = match (&kernel, &record, enforcing) {
        _ if !earlier_layouts.is_empty() => Some(format!(
            "programs pinned by an earlier cordon version are still attached ({}); start the agent to take the isolation over, or run `cordon-enforcer release` to remove them",
            earlier_layouts.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        )),
        (Some(_), _, false) if armed => None,
        (Some(_), _, false) => Some("programs are still pinned but no longer enforce (the deadline passed while the agent was not running); run `cordon-enforcer release` or start the agent to clean up".to_owned()),
        (None, Some(_), _) => Some("an isolation is recorded but nothing is pinned (the host rebooted?); start the agent (`cordon-enforcer run`) to restore it".to_owned()),
        _ => None,
    };
    let pins_intact = record.is_none() || kernel.as_ref().is_some_and(|k| !k.links.is_empty());
    let record_in_force = record.as_ref().filter(|_| enforcing);
    let expires_at = match (&kernel, enforcing) {
        (Some(k), true) if k.config.expires_at_coarse_ns != 0 => {
            let remaining_ms =
                i64::try_from(k.config.expires_at_coarse_ns.saturating_sub(now_coarse) / 1_000_000)
                    .unwrap_or(0);
            Some(record_in_force.and_then(|r| r.expires_at_unix_ms).unwrap_or(now_unix_ms() + remaining_ms))
        }
        _ => None,
    };
    let mode = enforcing.then(|| if expires_at.is_some() { Mode::Automatic } else { Mode::Manual });
    Ok(Status {
        isolated: enforcing,
        mode,
        expires_at: expires_at.map(format_time),
        expires_at_unix_ms: expires_at,
        started_at: record_in_force.map(|r| format_time(r.started_at_unix_ms)),
        reason: record_in_force.and_then(|r| r.reason.clone()),
        tags: if enforcing { vec![ISOLATED_TAG] } else { Vec::new() },
        exclusions: record_in_force.map(|r| r.exclusions.clone()).unwrap_or_default(),
        management: record_in_force.map(|r| r.management.clone()).unwrap_or_default(),
        allowed_processes: record_in_force.map(|r| r.allowed_processes.clone()).unwrap_or_default(),
        allow_dns: record_in_force.is_some_and(|r| r.allow_dns),
        allow_dhcp: record_in_force.is_some_and(|r| r.allow_dhcp),
        counters: kernel.as_ref().map(|k| k.counters).unwrap_or_default(),
        cgroup: target.cgroup.clone(),
        pin_dir: target.pins.root().to_path_buf(),
        pinned_links: kernel.as_ref().map(|k| k.links.clone()).unwrap_or_default(),
        armed,
        change_seq: kernel.as_ref().map(|k| k.config.change_seq),
        last_command_generation,
        history,
        attention,
        pins_intact,
        agent: None,
    })
}

/// What start-up restoration did.
#[derive(Debug, PartialEq, Eq)]
pub enum Restored {
    Nothing,
    /// The pins were there: adopted as they are.
    Adopted,
    /// The pins were gone (reboot): the recorded isolation was installed again.
    Reinstalled,
    /// The recorded isolation's deadline passed while the agent was down: lifted.
    Expired,
}

/// Run by the agent at start-up, before anything else.
pub fn restore(target: &Target) -> Result<Restored> {
    let _lock = lock_changes(target)?;
    let record = Store::open(&target.state_dir)?.current()?;
    let installed = target.pins.installed();
    match (record, installed) {
        (Some(record), _) if record.overdue_at(now_unix_ms()) => {
            release_locked(target, "agent", "expired", None)?;
            Ok(Restored::Expired)
        }
        (Some(_), true) => {
            // The management channel is this agent's now (its sockets are made after this).
            bpf::set_agent(&target.pins, std::process::id())?;
            sever::mark_existing_sockets(&[std::process::id()], AGENT_SOCKET_MARK);
            audit(target, "adopted", "agent", "pinned isolation adopted at start-up")?;
            Ok(Restored::Adopted)
        }
        (Some(record), false) => {
            if record.cgroup != target.cgroup {
                bail!(
                    "the recorded isolation applies to cgroup {} but the agent was started for {}",
                    record.cgroup.display(),
                    target.cgroup.display()
                );
            }
            apply_record(target, &record, Before::read(&target.pins), Some(std::process::id()))
                .context("cannot restore the recorded isolation")?;
            audit(target, "restored", "agent", "isolation re-installed at start-up (pins were gone)")?;
            Ok(Restored::Reinstalled)
        }
        (None, true) => Ok(Restored::Adopted),
        (None, false) => Ok(Restored::Nothing),
    }
}

fn audit(target: &Target, event: &str, actor: &str, detail: &str) -> Result<()> {
    Store::open(&target.state_dir)?.audit(&AuditEntry {
        at_unix_ms: now_unix_ms(),
        event: event.into(),
        actor: actor.into(),
        detail: detail.into(),
        command_generation: None,
        expires_at_unix_ms: None,
    })
}

/// What the agent's deadline check found.
#[derive(Debug, PartialEq, Eq)]
pub enum Deadline {
    /// No timed isolation in force.
    None,
    /// A timed isolation ends after this long.
    Pending(Duration),
    /// The deadline had passed: the isolation was lifted now.
    Lifted,
}

/// If the kernel-held deadline has passed, lifts the isolation properly.
pub fn expire_if_due(target: &Target) -> Result<Deadline> {
    let Some(kernel) = bpf::read_state(&target.pins)? else {
        return Ok(Deadline::None);
    };
    let deadline = kernel.config.expires_at_coarse_ns;
    if kernel.config.active == 0 || deadline == 0 {
        return Ok(Deadline::None);
    }
    let now = now_coarse_ns();
    if now >= deadline {
        let _lock = lock_changes(target)?;
        // Re-check under the lock: the command line may have changed it meanwhile.
        let still_due = bpf::read_state(&target.pins)?.is_some_and(|k| {
            k.config.active == 1
                && k.config.expires_at_coarse_ns != 0
                && now_coarse_ns() >= k.config.expires_at_coarse_ns
        });
        if !still_due {
            return Ok(Deadline::None);
        }
        release_locked(target, "agent", "expired", None)?;
        return Ok(Deadline::Lifted);
    }
    Ok(Deadline::Pending(Duration::from_nanos(deadline - now)))
}

pub fn format_time(unix_ms: i64) -> String {
    let nanos = i128::from(unix_ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| unix_ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolvers_are_read_from_resolv_conf() {
        let text = "# comment\nnameserver 192.0.2.53\nsearch example.org\nnameserver fe80::1%eth0\nnameserver  2001:db8::53\n";
        let found = resolvers(text);
        assert_eq!(
            found,
            vec![
                "192.0.2.53".parse::<IpAddr>().unwrap(),
                "fe80::1".parse().unwrap(),
                "2001:db8::53".parse().unwrap()
            ]
        );
        let specs: Vec<String> = dns_exclusions(&found[..1]).iter().map(ToString::to_string).collect();
        assert_eq!(specs, vec!["out,udp,192.0.2.53/32,53", "out,tcp,192.0.2.53/32,53"]);
    }

    #[test]
    fn management_addresses_become_out_tcp_exclusions() {
        let addresses: Vec<SocketAddr> =
            ["127.0.0.1:9092", "[::1]:9093", "127.0.0.1:9092"].iter().map(|a| a.parse().unwrap()).collect();
        let specs: Vec<String> = management_exclusions(&addresses).iter().map(ToString::to_string).collect();
        assert_eq!(specs, vec!["out,tcp,127.0.0.1/32,9092", "out,tcp,::1/128,9093"]);
    }

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_time(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}
