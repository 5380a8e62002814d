//! Facts about this host the enforcer needs: mounts, the cgroup v2 tree, interfaces.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Mount points of filesystems of type `fs_type`, from /proc/mounts.
pub fn mount_points(fs_type: &str) -> Result<Vec<PathBuf>> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("cannot read /proc/mounts")?;
    Ok(mounts
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.get(2) == Some(&fs_type)).then(|| PathBuf::from(fields[1]))
        })
        .collect())
}

/// The default cgroup: the cgroup v2 root.
pub fn cgroup2_root() -> Result<PathBuf> {
    mount_points("cgroup2")?.into_iter().next().context(
        "no cgroup v2 filesystem is mounted; cordon-enforcer needs cgroup v2 (mount -t cgroup2 none /sys/fs/cgroup)",
    )
}

/// Checks that `cgroup` is a directory of a cgroup v2 filesystem.
pub fn validate_cgroup(cgroup: &Path) -> Result<()> {
    if !cgroup.join("cgroup.procs").exists() {
        bail!("{} is not a cgroup v2 directory (it has no cgroup.procs)", cgroup.display());
    }
    let root = cgroup2_root()?;
    if !cgroup.starts_with(&root) {
        bail!("{} is not under the cgroup v2 mount {}", cgroup.display(), root.display());
    }
    Ok(())
}

/// Interfaces of this process's network namespace except loopback. Asked of the kernel by
/// netlink (`if_nameindex`), not read from `/sys/class/net`, which lists the interfaces of the
/// namespace `/sys` was mounted in: an agent in another network namespace would guard the wrong
/// interfaces, or fail on ones it cannot see.
pub fn non_loopback_interfaces() -> Vec<String> {
    let mut names = Vec::new();
    // SAFETY: if_nameindex returns null or an array ended by a zero entry, freed below.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return names;
        }
        let mut entry = list;
        while (*entry).if_index != 0 && !(*entry).if_name.is_null() {
            let name = std::ffi::CStr::from_ptr((*entry).if_name).to_string_lossy().into_owned();
            names.push(name);
            entry = entry.add(1);
        }
        libc::if_freenameindex(list);
    }
    names.retain(|name| name != "lo");
    names.sort();
    names.dedup();
    names
}
