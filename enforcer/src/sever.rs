//! Severs established TCP connections (through [`crate::sock_diag`]) and marks the sockets that
//! exempt processes already had open, so they are spared.
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
use crate::sock_diag::{DiagSocket, AF_INET, AF_INET6, TCP_LISTEN};

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
