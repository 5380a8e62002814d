//! The kernel side of isolation: loads, attaches, pins, adopts, updates and removes the eBPF
//! programs and maps. The only module that talks to aya.
//!
//! Pin layout under `<pin dir>/<PIN_LAYOUT_VERSION>/`:
//! - `maps/<MAP_NAME>`: every map (pinned by the loader, reused while they exist);
//! - `links/<program>` and `links/tc-ingress-<interface>`: every attachment. A pinned link
//!   keeps its program attached after the agent exits or is killed; removing the pin (and
//!   closing the last descriptor) detaches it.

use std::collections::HashSet;
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{
    CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr, CgroupSockAddrAttachType,
    CgroupSockAttachType, Program, SchedClassifier, TcAttachType,
};
use aya::EbpfLoader;
use cordon_wire::spec::Network;
use enforcer_common::{
    Config, RuleList, COMM_LEN, MAP_CONFIG, MAP_EXEMPT_COMM, MAP_EXEMPT_TGID, MAP_RULES_V4, MAP_RULES_V6,
    MAP_STATS, N_STATS, PIN_LAYOUT_VERSION, PROG_CONNECT4, PROG_CONNECT6, PROG_EGRESS, PROG_INGRESS,
    PROG_SENDMSG4, PROG_SENDMSG6, PROG_SOCK_CREATE, PROG_TC_INGRESS, STAT_CONNECTS_REFUSED,
    STAT_ECHO_DROPPED, STAT_EXEMPT_SOCKETS, STAT_PACKETS_ALLOWED, STAT_PACKETS_DROPPED, STAT_SOCKETS_REFUSED,
};

use cordon_wire::rule_table::RuleTables;

/// The compiled eBPF object, built by build.rs.
static PROGRAMS_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/enforcer-ebpf"));

/// How a cgroup program attaches.
#[derive(Clone, Copy)]
enum Hook {
    Skb(CgroupSkbAttachType),
    SockAddr(CgroupSockAddrAttachType),
    Sock(CgroupSockAttachType),
}

/// The cgroup programs, in the order they are attached.
const CGROUP_PROGRAMS: [(&str, Hook); 7] = [
    (PROG_SOCK_CREATE, Hook::Sock(CgroupSockAttachType::SockCreate)),
    (PROG_CONNECT4, Hook::SockAddr(CgroupSockAddrAttachType::Connect4)),
    (PROG_CONNECT6, Hook::SockAddr(CgroupSockAddrAttachType::Connect6)),
    (PROG_SENDMSG4, Hook::SockAddr(CgroupSockAddrAttachType::UDPSendMsg4)),
    (PROG_SENDMSG6, Hook::SockAddr(CgroupSockAddrAttachType::UDPSendMsg6)),
    (PROG_EGRESS, Hook::Skb(CgroupSkbAttachType::Egress)),
    (PROG_INGRESS, Hook::Skb(CgroupSkbAttachType::Ingress)),
];

/// Where one isolation's kernel objects are pinned.
#[derive(Clone, Debug)]
pub struct Pins {
    root: PathBuf,
}

impl Pins {
    pub fn new(pin_dir: &Path) -> Pins {
        Pins { root: pin_dir.join(PIN_LAYOUT_VERSION) }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn maps_dir(&self) -> PathBuf {
        self.root.join("maps")
    }

    fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    fn progs_dir(&self) -> PathBuf {
        self.root.join("progs")
    }

    fn prog(&self, name: &str) -> PathBuf {
        self.progs_dir().join(name)
    }

    fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    /// Names of the pinned links, sorted.
    pub fn links(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.links_dir())
            .map(|entries| entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Whether programs are attached (links pinned): an isolation is installed, enforcing or
    /// past its kernel deadline.
    pub fn installed(&self) -> bool {
        !self.links().is_empty() && self.map(MAP_CONFIG).exists()
    }

    /// Whether the programs are loaded and pinned (armed or attached).
    pub fn loaded(&self) -> bool {
        CGROUP_PROGRAMS.iter().all(|(name, _)| self.prog(name).exists()) && self.map(MAP_CONFIG).exists()
    }

    /// Loaded and pinned but not attached: no cost per packet, attaching takes a millisecond.
    pub fn armed(&self) -> bool {
        self.loaded() && self.links().is_empty()
    }

    /// Pin directories of other layout versions (`v<N>`) beside this one: left by an earlier
    /// cordon, their links may still hold programs attached.
    pub fn other_layouts(&self) -> Vec<PathBuf> {
        let Some(pin_dir) = self.root.parent() else { return Vec::new() };
        let Ok(entries) = fs::read_dir(pin_dir) else { return Vec::new() };
        let mut layouts: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .filter(|entry| {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                name != PIN_LAYOUT_VERSION
                    && name
                        .strip_prefix('v')
                        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
            .map(|entry| entry.path())
            .collect();
        layouts.sort();
        layouts
    }
}

/// Everything the kernel must enforce.
#[derive(Debug)]
pub struct Enforcement<'a> {
    pub tables: &'a RuleTables,
    pub exempt_names: &'a [[u8; COMM_LEN]],
    pub exempt_tgids: &'a [u32],
    /// `CLOCK_MONOTONIC_COARSE` nanoseconds; 0 for manual isolation.
    pub expires_at_coarse_ns: u64,
    /// false: attached but not isolated ("armed"), every program a no-op.
    pub active: bool,
    /// The agent's process: only its sockets may use the management channel (0: no agent).
    pub agent_tgid: u32,
}

const _: () = assert!(STAT_ECHO_DROPPED < N_STATS, "every counter index must fit the counters map");

/// Counters read from the kernel, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Counters {
    pub packets_allowed: u64,
    pub packets_dropped: u64,
    pub connects_refused: u64,
    pub raw_sockets_refused: u64,
    pub exempt_sockets_created: u64,
    pub echo_requests_dropped: u64,
}

/// What the pinned state says right now.
#[derive(Debug)]
pub struct KernelState {
    pub config: Config,
    pub counters: Counters,
    pub links: Vec<String>,
}

/// `bpf(2)` commands and link types used to ask the kernel whether a pinned link still holds.
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_TYPE_CGROUP: u32 = 3;
const BPF_LINK_TYPE_TCX: u32 = 11;

/// Whether the pinned link at `path` is still attached. A link that root detached (`BPF_LINK_DETACH`)
/// stays pinned but no longer holds its cgroup (cgroup id 0) or interface (ifindex 0).
fn link_attached(path: &Path) -> Result<bool> {
    use std::os::fd::FromRawFd as _;
    let name = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).context("a pin path has no NUL")?;
    // union bpf_attr for BPF_OBJ_GET: pathname (u64), bpf_fd, file_flags, path_fd.
    let mut get = [0u64; 3];
    get[0] = name.as_ptr() as u64;
    // SAFETY: bpf(2) with an attr of the size given, pointing at a live C string.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, get.as_mut_ptr(), std::mem::size_of_val(&get)) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("cannot open pinned link {}", path.display()));
    }
    // SAFETY: a new descriptor the kernel just returned, owned here.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(i32::try_from(fd).unwrap_or(-1)) };
    // struct bpf_link_info: type, id, prog_id, then the per-type union at offset 16.
    let mut info = [0u8; 128];
    // union bpf_attr for BPF_OBJ_GET_INFO_BY_FD: bpf_fd (u32), info_len (u32), info (u64).
    let mut query = [0u64; 2];
    query[0] = u64::from(std::os::fd::AsRawFd::as_raw_fd(&fd).cast_unsigned()) | (128u64 << 32);
    query[1] = info.as_mut_ptr() as u64;
    // SAFETY: bpf(2) with an attr of the size given, pointing at a live buffer of info_len bytes.
    let done = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_OBJ_GET_INFO_BY_FD, query.as_mut_ptr(), std::mem::size_of_val(&query))
    };
    if done < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("cannot read link {}", path.display()));
    }
    let link_type = u32::from_ne_bytes(info[0..4].try_into().expect("4 bytes"));
    Ok(match link_type {
        BPF_LINK_TYPE_CGROUP => u64::from_ne_bytes(info[16..24].try_into().expect("8 bytes")) != 0,
        BPF_LINK_TYPE_TCX => u32::from_ne_bytes(info[16..20].try_into().expect("4 bytes")) != 0,
        _ => true,
    })
}

/// The pinned links of an installed isolation that no longer hold (someone on the host detached
/// them), by pin name.
pub fn detached_links(pins: &Pins) -> Result<Vec<String>> {
    let mut detached = Vec::new();
    let Ok(entries) = std::fs::read_dir(pins.links_dir()) else { return Ok(detached) };
    for entry in entries.flatten() {
        if !link_attached(&entry.path())? {
            detached.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    detached.sort();
    Ok(detached)
}

/// Attaches again the links named `detached` (as [`detached_links`] names them), replacing their
/// pins.
pub fn reattach(pins: &Pins, cgroup: &Path, detached: &[String]) -> Result<()> {
    for name in detached {
        std::fs::remove_file(pins.links_dir().join(name))
            .with_context(|| format!("cannot remove the detached link {name}"))?;
        if let Some(interface) = name.strip_prefix("tc-ingress-") {
            attach_interfaces(pins, &[interface.to_owned()])?;
        } else if let Some((_, hook)) = CGROUP_PROGRAMS.iter().find(|(program, _)| program == name) {
            attach_cgroup_program(pins, cgroup, name, *hook)?;
        }
    }
    Ok(())
}

/// Makes sure bpffs is mounted at the pin directory's filesystem.
pub fn ensure_bpffs(pin_dir: &Path) -> Result<()> {
    if crate::host::mount_points("bpf")?.iter().any(|mount| pin_dir.starts_with(mount)) {
        return Ok(());
    }
    bail!(
        "{} is not on a BPF filesystem (bpffs); mount one with `mount -t bpf bpf /sys/fs/bpf` \
         or pass --pin-dir under a bpffs mount",
        pin_dir.display()
    )
}

/// Makes the kernel enforce `enforcement` for `cgroup`: loads the programs unless they are
/// armed already, attaches them (and the TC program to `interfaces`), pins the links, fills the
/// maps and turns enforcement on. On any failure everything done here is undone (armed
/// programs stay armed) and the error returned: never a half-installed isolation.
pub fn install(
    pins: &Pins,
    cgroup: &Path,
    interfaces: &[String],
    enforcement: &Enforcement<'_>,
    change_seq: u64,
) -> Result<()> {
    let was_armed = pins.armed();
    if !was_armed && pins.root.exists() {
        // Leftovers of an isolation whose links are gone: start clean, never reuse stale maps.
        remove_pins(pins)?;
    }
    let result = (|| {
        if !was_armed {
            load(pins)?;
        }
        attach(pins, cgroup, interfaces)?;
        LiveMaps::open(pins)?.apply(enforcement, change_seq)
    })();
    if result.is_err() {
        if let Err(cleanup) = roll_back(pins, was_armed) {
            return result.context(format!("and rolling back failed too: {cleanup:#}"));
        }
        return result;
    }
    // Only now, with this isolation enforcing, an earlier version's may go: no open window.
    retire_other_layouts(pins)
}

/// Detaches and removes what earlier layout versions pinned (an upgrade never leaves an old
/// isolation enforcing behind the new agent's back, nor attached after a release).
pub fn retire_other_layouts(pins: &Pins) -> Result<()> {
    for layout in pins.other_layouts() {
        remove_pins(&Pins { root: layout })?;
    }
    Ok(())
}

/// Makes `agent_tgid` the agent whose sockets may use the management channel (a restarted agent
/// adopting the isolation in force).
pub fn set_agent(pins: &Pins, agent_tgid: u32) -> Result<()> {
    let mut maps = LiveMaps::open(pins)?;
    let config = Config { agent_tgid, ..maps.config()? };
    maps.config.set(0, config, 0).context("cannot write the config map")?;
    Ok(())
}

/// Writes the change sequence number of the isolation in force into its config (shown by
/// `status`).
pub fn set_change_seq(pins: &Pins, change_seq: u64) -> Result<()> {
    let mut maps = LiveMaps::open(pins)?;
    let config = Config { change_seq, ..maps.config()? };
    maps.config.set(0, config, 0).context("cannot write the config map")?;
    Ok(())
}

/// Loads and pins the programs and maps without attaching anything (see [`Pins::armed`]).
pub fn arm(pins: &Pins, enforcement: &Enforcement<'_>) -> Result<()> {
    if pins.root.exists() {
        remove_pins(pins)?;
    }
    let result = load(pins).and_then(|()| LiveMaps::open(pins)?.apply(enforcement, 0));
    if result.is_err() {
        let _ = remove_pins(pins);
    }
    result
}

/// Undoes a failed install: back to armed, or to nothing.
pub fn roll_back(pins: &Pins, to_armed: bool) -> Result<()> {
    if to_armed {
        if let Ok(mut maps) = LiveMaps::open(pins) {
            maps.deactivate()?;
        }
        remove_links(pins)
    } else {
        remove_pins(pins)
    }
}

/// Loads (the kernel verifies them: the slow part) and pins every program, creating and
/// pinning the maps on the way.
fn load(pins: &Pins) -> Result<()> {
    for dir in [pins.maps_dir(), pins.links_dir(), pins.progs_dir()] {
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut ebpf =
        EbpfLoader::new().default_map_pin_directory(pins.maps_dir()).load(PROGRAMS_OBJECT).context(
            "the kernel refused to load cordon's eBPF programs (they need root, or CAP_SYS_ADMIN with \
             CAP_NET_ADMIN; Linux 6.1+ with BTF)",
        )?;
    let names = CGROUP_PROGRAMS.iter().map(|(name, _)| *name).chain([PROG_TC_INGRESS]);
    for name in names {
        let program =
            ebpf.program_mut(name).with_context(|| format!("program {name} missing from the object"))?;
        match program {
            Program::CgroupSkb(p) => p.load(),
            Program::CgroupSockAddr(p) => p.load(),
            Program::CgroupSock(p) => p.load(),
            Program::SchedClassifier(p) => p.load(),
            _ => bail!("program {name} has an unexpected type"),
        }
        .with_context(|| format!("the kernel refused program {name}"))?;
        program.pin(pins.prog(name)).with_context(|| format!("cannot pin program {name}"))?;
    }
    Ok(())
}

/// Attaches the pinned programs to `cgroup` and `interfaces` and pins the links. The config
/// still says "inactive" when this runs, so nothing is enforced until every piece is in place.
fn attach(pins: &Pins, cgroup: &Path, interfaces: &[String]) -> Result<()> {
    for (name, hook) in CGROUP_PROGRAMS {
        attach_cgroup_program(pins, cgroup, name, hook)?;
    }
    attach_interfaces(pins, interfaces)
}

/// Attaches the pinned program `name` to `cgroup` and pins its link.
fn attach_cgroup_program(pins: &Pins, cgroup: &Path, name: &str, hook: Hook) -> Result<()> {
    let cgroup_file = File::open(cgroup).with_context(|| format!("cannot open cgroup {}", cgroup.display()))?;
    {
        let path = pins.prog(name);
        let attach_error = || format!("cannot attach {name} to {}", cgroup.display());
        let link: FdLink = match hook {
            Hook::Skb(attach_type) => {
                let mut program = CgroupSkb::from_pin(&path, attach_type)?;
                let id = program
                    .attach(&cgroup_file, attach_type, CgroupAttachMode::Single)
                    .with_context(attach_error)?;
                program.take_link(id)?.try_into()?
            }
            Hook::SockAddr(attach_type) => {
                let mut program = CgroupSockAddr::from_pin(&path, attach_type)?;
                let id = program.attach(&cgroup_file, CgroupAttachMode::Single).with_context(attach_error)?;
                program.take_link(id)?.try_into()?
            }
            Hook::Sock(attach_type) => {
                let mut program = CgroupSock::from_pin(&path, attach_type)?;
                let id = program.attach(&cgroup_file, CgroupAttachMode::Single).with_context(attach_error)?;
                program.take_link(id)?.try_into()?
            }
        };
        pin_link(link, &pins.links_dir().join(name))?;
    }
    Ok(())
}

/// Attaches the ICMP echo guard to each of `interfaces` (tcx ingress), pinning its link.
fn attach_interfaces(pins: &Pins, interfaces: &[String]) -> Result<()> {
    if interfaces.is_empty() {
        return Ok(());
    }
    let mut classifier = SchedClassifier::from_pin(pins.prog(PROG_TC_INGRESS))?;
    for interface in interfaces {
        let id = classifier
            .attach(interface, TcAttachType::Ingress)
            .with_context(|| format!("cannot attach cordon_tc_ingress to interface {interface}"))?;
        let link: FdLink =
            classifier.take_link(id)?.try_into().context("interface programs need tcx links (kernel 6.6 or newer)")?;
        pin_link(link, &pins.links_dir().join(format!("tc-ingress-{interface}")))?;
    }
    Ok(())
}

/// Guards interfaces that appeared after the isolation was installed; returns those it attached.
pub fn guard_new_interfaces(pins: &Pins, interfaces: &[String]) -> Result<Vec<String>> {
    let new: Vec<String> = interfaces
        .iter()
        .filter(|interface| !pins.links_dir().join(format!("tc-ingress-{interface}")).exists())
        .cloned()
        .collect();
    attach_interfaces(pins, &new)?;
    Ok(new)
}

fn pin_link(link: FdLink, path: &Path) -> Result<()> {
    link.pin(path).with_context(|| format!("cannot pin link at {}", path.display()))?;
    Ok(())
}

/// Turns enforcement off at once, then removes every pin so the programs detach and the maps
/// are freed. Safe to call when nothing is installed.
pub fn uninstall(pins: &Pins) -> Result<()> {
    if pins.map(MAP_CONFIG).exists() {
        if let Ok(mut maps) = LiveMaps::open(pins) {
            // Best effort: if this fails the links are still removed below.
            let _ = maps.deactivate();
        }
    }
    retire_other_layouts(pins)?;
    remove_pins(pins)
}

fn remove_pins(pins: &Pins) -> Result<()> {
    remove_links(pins)?;
    if pins.root.exists() {
        fs::remove_dir_all(&pins.root).with_context(|| format!("cannot remove {}", pins.root.display()))?;
    }
    if let Some(pin_dir) = pins.root.parent() {
        // Only succeeds when nothing else lives there; anything else is not ours to remove.
        let _ = fs::remove_dir(pin_dir);
    }
    Ok(())
}

/// Detaches: removes every link pin (the links close with their last descriptor).
fn remove_links(pins: &Pins) -> Result<()> {
    for link in pins.links() {
        let path = pins.links_dir().join(&link);
        match PinnedLink::from_pin(&path) {
            Ok(pinned) => {
                pinned.unpin().with_context(|| format!("cannot remove pinned link {}", path.display()))?;
            }
            Err(_) => fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?,
        }
    }
    Ok(())
}

/// Reads the pinned config and counters; `None` when nothing is installed.
pub fn read_state(pins: &Pins) -> Result<Option<KernelState>> {
    if !pins.map(MAP_CONFIG).exists() {
        return Ok(None);
    }
    let maps = LiveMaps::open(pins)?;
    Ok(Some(KernelState { config: maps.config()?, counters: maps.counters()?, links: pins.links() }))
}

/// Open handles on the pinned maps of an installed isolation.
pub struct LiveMaps {
    config: Array<MapData, Config>,
    rules_v4: LpmTrie<MapData, [u8; 4], RuleList>,
    rules_v6: LpmTrie<MapData, [u8; 16], RuleList>,
    exempt_comm: HashMap<MapData, [u8; COMM_LEN], u8>,
    exempt_tgid: HashMap<MapData, u32, u8>,
    stats: PerCpuArray<MapData, u64>,
}

fn open_map(pins: &Pins, name: &str) -> Result<Map> {
    let path = pins.map(name);
    let data =
        MapData::from_pin(&path).with_context(|| format!("cannot open pinned map {}", path.display()))?;
    Map::from_map_data(data).with_context(|| format!("pinned map {} has an unexpected type", path.display()))
}

impl LiveMaps {
    pub fn open(pins: &Pins) -> Result<LiveMaps> {
        Ok(LiveMaps {
            config: open_map(pins, MAP_CONFIG)?.try_into()?,
            rules_v4: open_map(pins, MAP_RULES_V4)?.try_into()?,
            rules_v6: open_map(pins, MAP_RULES_V6)?.try_into()?,
            exempt_comm: open_map(pins, MAP_EXEMPT_COMM)?.try_into()?,
            exempt_tgid: open_map(pins, MAP_EXEMPT_TGID)?.try_into()?,
            stats: open_map(pins, MAP_STATS)?.try_into()?,
        })
    }

    pub fn config(&self) -> Result<Config> {
        self.config.get(&0, 0).context("cannot read the config map")
    }

    fn deactivate(&mut self) -> Result<()> {
        let config = Config { active: 0, ..self.config()? };
        self.config.set(0, config, 0).context("cannot write the config map")?;
        Ok(())
    }

    /// Brings the maps to `enforcement`, then writes the config. New entries go in before stale
    /// ones come out, so while a change lands the host is never more open than the union of
    /// the old and new exclusions, and never cuts what both allow.
    pub fn apply(&mut self, enforcement: &Enforcement<'_>, change_seq: u64) -> Result<()> {
        sync_trie(&mut self.rules_v4, &enforcement.tables.v4)?;
        sync_trie(&mut self.rules_v6, &enforcement.tables.v6)?;
        sync_set(&mut self.exempt_comm, enforcement.exempt_names)
            .context("cannot update the exempt process names")?;
        sync_set(&mut self.exempt_tgid, enforcement.exempt_tgids)
            .context("cannot update the exempt processes")?;
        let config = Config {
            active: u32::from(enforcement.active),
            agent_tgid: enforcement.agent_tgid,
            expires_at_coarse_ns: enforcement.expires_at_coarse_ns,
            change_seq,
        };
        self.config.set(0, config, 0).context("cannot write the config map")?;
        Ok(())
    }

    pub fn counters(&self) -> Result<Counters> {
        let total = |index: u32| -> Result<u64> {
            let values = self.stats.get(&index, 0).context("cannot read the counters map")?;
            Ok(values.iter().sum())
        };
        Ok(Counters {
            packets_allowed: total(STAT_PACKETS_ALLOWED)?,
            packets_dropped: total(STAT_PACKETS_DROPPED)?,
            connects_refused: total(STAT_CONNECTS_REFUSED)?,
            raw_sockets_refused: total(STAT_SOCKETS_REFUSED)?,
            exempt_sockets_created: total(STAT_EXEMPT_SOCKETS)?,
            echo_requests_dropped: total(STAT_ECHO_DROPPED)?,
        })
    }
}

/// Makes `trie` hold exactly `entries`, adding and updating before removing.
fn sync_trie<const N: usize>(
    trie: &mut LpmTrie<MapData, [u8; N], RuleList>,
    entries: &[(Network, RuleList)],
) -> Result<()> {
    let mut wanted = HashSet::new();
    for (network, list) in entries {
        let key = Key::new(u32::from(network.prefix_len()), address_bytes::<N>(network.address()));
        trie.insert(&key, list, 0).with_context(|| format!("cannot add exclusion for {network}"))?;
        wanted.insert((key.prefix_len(), key.data()));
    }
    let stale: Vec<Key<[u8; N]>> = trie
        .keys()
        .filter_map(Result::ok)
        .filter(|key| !wanted.contains(&(key.prefix_len(), key.data())))
        .collect();
    for key in stale {
        trie.remove(&key).context("cannot remove a stale exclusion")?;
    }
    Ok(())
}

/// Makes the set-like `map` hold exactly `wanted`, adding before removing.
fn sync_set<K: aya::Pod + Eq + std::hash::Hash>(
    map: &mut HashMap<MapData, K, u8>,
    wanted: &[K],
) -> Result<()> {
    for key in wanted {
        map.insert(key, 1, 0)?;
    }
    let stale: Vec<K> = map.keys().filter_map(Result::ok).filter(|key| !wanted.contains(key)).collect();
    for key in stale {
        map.remove(&key)?;
    }
    Ok(())
}

/// The address in network byte order, as the tries store it (`N` is 4 or 16).
fn address_bytes<const N: usize>(address: std::net::IpAddr) -> [u8; N] {
    let octets = match address {
        std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
        std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    let mut bytes = [0u8; N];
    bytes.copy_from_slice(&octets[..N]);
    bytes
}
