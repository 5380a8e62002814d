//! Severs established TCP connections (netlink `SOCK_DESTROY`, what `ss -K` does) and marks the
//! sockets that exempt processes already had open, so they are spared.
//!
//! Only sockets owned by the isolated cgroup (or its descendants) are ever touched: each socket's
//! cgroup id, reported by the kernel, must be in the set read from the cgroup tree. Sockets live
//! in network namespaces, so the work runs once in every namespace the cgroup's processes use.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io;
use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use cordon_wire::spec::Exclusion;
use enforcer_common::{AGENT_SOCKET_MARK, EXEMPT_SOCKET_MARK};

use crate::exclusion::spares_connection;

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const INET_DIAG_MARK: u16 = 15;
const INET_DIAG_CGROUP_ID: u16 = 21;
const TCP_LISTEN: u8 = 10;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// TCP states worth severing: everything but LISTEN, CLOSE and `TIME_WAIT`.
const SEVERABLE_STATES: u32 =
    (1 << 1) | (1 << 2) | (1 << 3) | (1 << 4) | (1 << 5) | (1 << 8) | (1 << 9) | (1 << 11);

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct NlMsgHdr {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct InetDiagSockId {
    sport: u16,
    dport: u16,
    src: [u32; 4],
    dst: [u32; 4],
    interface: u32,
    cookie: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct InetDiagReqV2 {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: InetDiagSockId,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct InetDiagMsg {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: InetDiagSockId,
    expires: u32,
    rqueue: u32,
    wqueue: u32,
    uid: u32,
    inode: u32,
}

/// One TCP socket as the kernel reported it.
#[derive(Clone, Copy, Debug)]
pub struct SocketInfo {
    pub local: IpAddr,
    pub local_port: u16,
    pub remote: IpAddr,
    pub remote_port: u16,
    pub state: u8,
    pub mark: u32,
    pub cgroup_id: u64,
    family: u8,
    /// The kernel's identity of the socket (addresses, ports, cookie), echoed to destroy it.
    id: InetDiagSockId,
}

/// What one severing pass did.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct SeverReport {
    pub severed: usize,
    pub spared: usize,
    pub namespaces: usize,
}

/// `cgroup` and every cgroup directory below it.
fn cgroup_tree(cgroup: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let mut pending = vec![cgroup.to_path_buf()];
    while let Some(dir) = pending.pop() {
        if let Ok(entries) = fs::read_dir(&dir) {
            pending.extend(
                entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()),
            );
        }
        dirs.push(dir);
    }
    dirs
}

/// Cgroup ids (inode numbers on cgroup2) of `cgroup` and every cgroup below it.
pub fn cgroup_ids(cgroup: &Path) -> Result<HashSet<u64>> {
    cgroup_tree(cgroup)
        .iter()
        .map(|dir| {
            Ok(fs::metadata(dir).with_context(|| format!("cannot read cgroup {}", dir.display()))?.ino())
        })
        .collect()
}

/// Process ids in `cgroup` and below.
pub fn cgroup_pids(cgroup: &Path) -> Vec<u32> {
    cgroup_tree(cgroup)
        .iter()
        .filter_map(|dir| fs::read_to_string(dir.join("cgroup.procs")).ok())
        .flat_map(|text| text.lines().filter_map(|line| line.trim().parse::<u32>().ok()).collect::<Vec<_>>())
        .collect()
}

/// One `/proc/<pid>/ns/net` path per distinct network namespace used by `pids`. A process that
/// has exited meanwhile is skipped; one whose namespace cannot be seen is an error, since its
/// connections could not be severed (seeing another process's namespace takes `CAP_SYS_PTRACE`
/// when it holds capabilities the agent does not).
fn namespaces_of(pids: &[u32]) -> Result<Vec<PathBuf>> {
    let mut by_inode: BTreeMap<u64, PathBuf> = BTreeMap::new();
    for pid in pids {
        let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
        match fs::metadata(&path) {
            Ok(meta) => {
                by_inode.entry(meta.ino()).or_insert(path);
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(error).with_context(|| {
                    format!(
                        "cannot see the network namespace of process {pid} ({}), so its connections \
                         could not be severed (the agent needs CAP_SYS_PTRACE)",
                        path.display()
                    )
                });
            }
        }
    }
    Ok(by_inode.into_values().collect())
}

/// Severs every TCP connection of the cgroup's processes that no exclusion spares, in every
/// network namespace they use. Loopback connections and exempt sockets are left alone.
/// `anyones` exclusions spare any process's connections; `agents` ones only the agent's (sockets
/// carrying the agent mark): another process's connection to the brokers is severed.
pub fn sever_connections(cgroup: &Path, anyones: &[Exclusion], agents: &[Exclusion]) -> Result<SeverReport> {
    let ids = cgroup_ids(cgroup)?;
    let namespaces = namespaces_of(&cgroup_pids(cgroup))?;
    let mut report = SeverReport { namespaces: namespaces.len(), ..SeverReport::default() };
    for namespace in namespaces {
        let (anyones, agents) = (anyones.to_vec(), agents.to_vec());
        let ids = ids.clone();
        let (severed, spared) = in_namespace(&namespace, move || sever_here(&ids, &anyones, &agents))??;
        report.severed += severed;
        report.spared += spared;
    }
    Ok(report)
}

/// Runs `work` on a thread that has joined the network namespace at `namespace`.
fn in_namespace<T: Send + 'static>(namespace: &Path, work: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let file = fs::File::open(namespace).with_context(|| format!("cannot open {}", namespace.display()))?;
    let thread = std::thread::spawn(move || {
        // SAFETY: plain syscall on an open namespace fd; it only changes this new thread.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(work())
    });
    let joined = thread.join().map_err(|_| anyhow::anyhow!("severing thread panicked"))?;
    joined.with_context(|| format!("cannot enter network namespace {}", namespace.display()))
}

fn sever_here(
    cgroup_ids: &HashSet<u64>,
    anyones: &[Exclusion],
    agents: &[Exclusion],
) -> Result<(usize, usize)> {
    let socket = DiagSocket::open()?;
    let local_addresses = local_addresses();
    let mut severed = 0;
    let mut spared = 0;
    for family in [AF_INET, AF_INET6] {
        for info in socket.dump_tcp(family)? {
            if !cgroup_ids.contains(&info.cgroup_id) || info.state == TCP_LISTEN {
                continue;
            }
            let loopback = is_loopback(info.remote) || local_addresses.contains(&info.remote);
            let keeps = |e: &Exclusion| spares_connection(*e, true, info.remote, info.local_port, info.remote_port);
            let excluded =
                anyones.iter().any(keeps) || (info.mark == AGENT_SOCKET_MARK && agents.iter().any(keeps));
            if loopback || excluded || info.mark == EXEMPT_SOCKET_MARK {
                spared += 1;
                continue;
            }
            match socket.destroy(&info) {
                Ok(()) => severed += 1,
                // Closed between the dump and the destroy: nothing left to sever.
                Err(error) if error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(error) if error.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                    return Err(error)
                        .context("the kernel cannot destroy sockets (CONFIG_INET_DIAG_DESTROY is off)");
                }
                Err(error) => {
                    return Err(error).with_context(|| {
                        format!(
                            "cannot sever {}:{} -> {}:{}",
                            info.local, info.local_port, info.remote, info.remote_port
                        )
                    })
                }
            }
        }
    }
    Ok((severed, spared))
}

fn is_loopback(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

/// The addresses of this network namespace's interfaces: traffic to them stays on loopback.
fn local_addresses() -> HashSet<IpAddr> {
    let mut addresses = HashSet::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below; we only read from it.
    if unsafe { libc::getifaddrs(&raw mut head) } != 0 {
        return addresses;
    }
    let mut cursor = head;
    while !cursor.is_null() {
        // SAFETY: every node of the list is valid until freeifaddrs.
        let entry = unsafe { &*cursor };
        if !entry.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr whose family says which struct it is.
            unsafe {
                match i32::from((*entry.ifa_addr).sa_family) {
                    libc::AF_INET => {
                        let sin = std::ptr::read_unaligned(entry.ifa_addr.cast::<libc::sockaddr_in>());
                        addresses.insert(IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))));
                    }
                    libc::AF_INET6 => {
                        let sin6 = std::ptr::read_unaligned(entry.ifa_addr.cast::<libc::sockaddr_in6>());
                        addresses.insert(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
                    }
                    _ => {}
                }
            }
        }
        cursor = entry.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs.
    unsafe { libc::freeifaddrs(head) };
    addresses
}

/// A `NETLINK_SOCK_DIAG` socket.
struct DiagSocket {
    fd: OwnedFd,
}

fn as_bytes<T: Copy>(value: &T) -> &[u8] {
    // SAFETY: T is a #[repr(C)] plain-data struct; viewing it as bytes is sound.
    unsafe { std::slice::from_raw_parts(std::ptr::from_ref(value).cast::<u8>(), size_of::<T>()) }
}

fn read_struct<T: Copy + Default>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < size_of::<T>() {
        return None;
    }
    let mut value = T::default();
    // SAFETY: length checked; T is plain data, any bytes are a valid value.
    unsafe {
        std::ptr::copy_nonoverlapping(
            bytes.as_ptr(),
            std::ptr::from_mut(&mut value).cast::<u8>(),
            size_of::<T>(),
        );
    };
    Some(value)
}

impl DiagSocket {
    fn open() -> Result<DiagSocket> {
        // SAFETY: plain socket(2) call.
        let fd = unsafe {
            libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_SOCK_DIAG)
        };
        if fd < 0 {
            return Err(io::Error::last_os_error()).context("cannot open a NETLINK_SOCK_DIAG socket");
        }
        // SAFETY: fd was just created and is owned by nothing else.
        Ok(DiagSocket { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    fn send(&self, kind: u16, flags: u16, request: &InetDiagReqV2) -> io::Result<()> {
        let header = NlMsgHdr {
            len: u32::try_from(size_of::<NlMsgHdr>() + size_of::<InetDiagReqV2>()).unwrap_or(u32::MAX),
            kind,
            flags,
            seq: 1,
            pid: 0,
        };
        let mut message = Vec::with_capacity(header.len as usize);
        message.extend_from_slice(as_bytes(&header));
        message.extend_from_slice(as_bytes(request));
        // SAFETY: sending a buffer we own.
        let sent = unsafe { libc::send(self.fd.as_raw_fd(), message.as_ptr().cast(), message.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn receive(&self, buffer: &mut [u8]) -> io::Result<usize> {
        // SAFETY: receiving into a buffer we own.
        let received =
            unsafe { libc::recv(self.fd.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len(), 0) };
        usize::try_from(received).map_err(|_| io::Error::last_os_error())
    }

    fn dump_tcp(&self, family: u8) -> Result<Vec<SocketInfo>> {
        let request = InetDiagReqV2 {
            family,
            protocol: u8::try_from(libc::IPPROTO_TCP).unwrap_or(6),
            states: SEVERABLE_STATES | (1 << TCP_LISTEN),
            ..InetDiagReqV2::default()
        };
        let flags = u16::try_from(libc::NLM_F_REQUEST | libc::NLM_F_DUMP).unwrap_or(0);
        self.send(SOCK_DIAG_BY_FAMILY, flags, &request)
            .context("cannot ask the kernel for its TCP sockets")?;
        let mut sockets = Vec::new();
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let received = self.receive(&mut buffer).context("cannot read the kernel's socket list")?;
            let mut offset = 0;
            while offset + size_of::<NlMsgHdr>() <= received {
                let Some(header) = read_struct::<NlMsgHdr>(&buffer[offset..received]) else {
                    break;
                };
                let length = header.len as usize;
                if length < size_of::<NlMsgHdr>() || offset + length > received {
                    break;
                }
                match header.kind {
                    NLMSG_DONE => return Ok(sockets),
                    NLMSG_ERROR => {
                        let code =
                            read_struct::<i32>(&buffer[offset + size_of::<NlMsgHdr>()..offset + length])
                                .unwrap_or(0);
                        return Err(io::Error::from_raw_os_error(-code))
                            .context("the kernel refused to list sockets");
                    }
                    _ => {
                        if let Some(info) =
                            parse_socket(family, &buffer[offset + size_of::<NlMsgHdr>()..offset + length])
                        {
                            sockets.push(info);
                        }
                    }
                }
                offset += (length + 3) & !3;
            }
        }
    }

    fn destroy(&self, info: &SocketInfo) -> io::Result<()> {
        let request = InetDiagReqV2 {
            family: info.family,
            protocol: u8::try_from(libc::IPPROTO_TCP).unwrap_or(6),
            ext: 0,
            pad: 0,
            states: u32::MAX,
            id: info.id,
        };
        let flags = u16::try_from(libc::NLM_F_REQUEST | libc::NLM_F_ACK).unwrap_or(0);
        self.send(SOCK_DESTROY, flags, &request)?;
        let mut buffer = [0u8; 512];
        let received = self.receive(&mut buffer)?;
        let header = read_struct::<NlMsgHdr>(&buffer[..received])
            .ok_or_else(|| io::Error::other("short netlink answer"))?;
        if header.kind == NLMSG_ERROR {
            let code = read_struct::<i32>(&buffer[size_of::<NlMsgHdr>()..received]).unwrap_or(0);
            if code != 0 {
                return Err(io::Error::from_raw_os_error(-code));
            }
        }
        Ok(())
    }
}

fn address(family: u8, words: [u32; 4]) -> IpAddr {
    if i32::from(family) == libc::AF_INET {
        IpAddr::V4(Ipv4Addr::from(u32::from_be(words[0])))
    } else {
        let mut bytes = [0u8; 16];
        for (i, word) in words.iter().enumerate() {
            bytes[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(bytes))
    }
}

fn parse_socket(family: u8, payload: &[u8]) -> Option<SocketInfo> {
    let message = read_struct::<InetDiagMsg>(payload)?;
    let mut info = SocketInfo {
        local: address(family, message.id.src),
        local_port: u16::from_be(message.id.sport),
        remote: address(family, message.id.dst),
        remote_port: u16::from_be(message.id.dport),
        state: message.state,
        mark: 0,
        cgroup_id: 0,
        family,
        id: message.id,
    };
    let mut offset = (size_of::<InetDiagMsg>() + 3) & !3;
    while offset + 4 <= payload.len() {
        let length = usize::from(u16::from_ne_bytes([payload[offset], payload[offset + 1]]));
        let kind = u16::from_ne_bytes([payload[offset + 2], payload[offset + 3]]);
        if length < 4 || offset + length > payload.len() {
            break;
        }
        let value = &payload[offset + 4..offset + length];
        match kind {
            INET_DIAG_MARK => info.mark = read_struct::<u32>(value).unwrap_or(0),
            INET_DIAG_CGROUP_ID => info.cgroup_id = read_struct::<u64>(value).unwrap_or(0),
            _ => {}
        }
        offset += (length + 3) & !3;
    }
    Some(info)
}

/// The processes (thread-group ids) in `pids` whose name is one of `names`.
pub fn processes_named(pids: &[u32], names: &[String]) -> Vec<u32> {
    pids.iter()
        .copied()
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| names.iter().any(|n| n == comm.trim_end_matches('\n')))
        })
        .collect()
}

/// Marks every IPv4/IPv6 socket the processes `tgids` already hold as exempt, so the programs
/// and the severing pass spare them (sockets created from now on are marked by the kernel).
/// Returns how many sockets were marked.
pub fn mark_existing_sockets(tgids: &[u32], mark: u32) -> usize {
    let mut marked = 0;
    for &tgid in tgids {
        let Ok(entries) = fs::read_dir(format!("/proc/{tgid}/fd")) else {
            continue;
        };
        let pid = libc::pid_t::try_from(tgid).unwrap_or(0);
        // SAFETY: pidfd_open(2) with no flags; the result is checked and owned below.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        let Ok(pidfd) = i32::try_from(pidfd) else {
            continue;
        };
        if pidfd < 0 {
            continue;
        }
        // SAFETY: fresh descriptor owned by nothing else.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
        for entry in entries.flatten() {
            let is_socket = fs::read_link(entry.path())
                .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
            let Some(target_fd) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            if is_socket && mark_remote_socket(&pidfd, target_fd, mark) {
                marked += 1;
            }
        }
    }
    marked
}

fn mark_remote_socket(pidfd: &OwnedFd, target_fd: i32, mark: u32) -> bool {
    // SAFETY: pidfd_getfd(2) duplicates the target's descriptor into ours; checked below.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target_fd, 0) };
    let Ok(fd) = i32::try_from(fd) else {
        return false;
    };
    if fd < 0 {
        return false;
    }
    // SAFETY: fresh descriptor owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut domain: libc::c_int = 0;
    let mut length = libc::socklen_t::try_from(size_of::<libc::c_int>()).unwrap_or(4);
    // SAFETY: getsockopt into a local int of the given length.
    let ok = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_DOMAIN,
            (&raw mut domain).cast(),
            &raw mut length,
        )
    } == 0;
    if !ok || (domain != libc::AF_INET && domain != libc::AF_INET6) {
        return false;
    }
    // SAFETY: setsockopt from a local u32 of the given length.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MARK,
            (&raw const mark).cast(),
            libc::socklen_t::try_from(size_of::<u32>()).unwrap_or(4),
        ) == 0
    }
}
