//! The agent's identity: its own Ed25519 key pair, which signs every status report it sends.
//! cordon applies a report only when this key is the one an operator enrolled for the host.
//!
//! The secret key lives in `<state dir>/agent.key` (base64, mode 0600), created on first use; a
//! key file that others may read is refused, since anyone who reads it can speak for the agent.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use cordon_wire::SigningKey;

/// Where the agent's secret key is kept.
pub fn key_path(state_dir: &Path) -> PathBuf {
    state_dir.join("agent.key")
}

/// The public half as base64 text: what `cordon agents enroll` takes.
pub fn public_text(key: &SigningKey) -> String {
    cordon_wire::key_to_base64(key.verifying_key().as_bytes())
}

/// What [`load_or_create`] found.
pub enum Loaded {
    Existing(SigningKey),
    Created(SigningKey),
}

impl Loaded {
    pub fn key(self) -> SigningKey {
        match self {
            Loaded::Existing(key) | Loaded::Created(key) => key,
        }
    }
}

/// Reads the agent's key, creating it (0600) when there is none.
pub fn load_or_create(state_dir: &Path) -> Result<Loaded> {
    let path = key_path(state_dir);
    if path.exists() {
        return read(&path).map(Loaded::Existing);
    }
    let key = cordon_wire::generate_signing_key();
    write_new(&path, &key)?;
    Ok(Loaded::Created(key))
}

/// Replaces the agent's key with a new one (key rotation); returns the new key.
pub fn rotate(state_dir: &Path) -> Result<SigningKey> {
    let path = key_path(state_dir);
    let key = cordon_wire::generate_signing_key();
    let next = path.with_extension("key.new");
    let _ = std::fs::remove_file(&next);
    write_new(&next, &key)?;
    std::fs::rename(&next, &path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(key)
}

fn read(path: &Path) -> Result<SigningKey> {
    cordon_wire::secret::check_private(path, "the agent's key").map_err(|problem| {
        anyhow::anyhow!(
            "{problem}: they could sign reports as this agent (and if someone did read it, `cordon-enforcer keygen \
             --rotate`)"
        )
    })?;
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    cordon_wire::signing_key_from_base64(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn write_new(path: &Path, key: &SigningKey) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    writeln!(file, "{}", cordon_wire::key_to_base64(&key.to_bytes()))
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cordon-identity-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn created_once_private_then_read_back() {
        let dir = scratch("create");
        let Loaded::Created(first) = load_or_create(&dir).unwrap() else { panic!("expected a new key") };
        let mode = std::fs::metadata(key_path(&dir)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let Loaded::Existing(again) = load_or_create(&dir).unwrap() else { panic!("expected the same key") };
        assert_eq!(public_text(&first), public_text(&again));
        let rotated = rotate(&dir).unwrap();
        assert_ne!(public_text(&rotated), public_text(&first));
        assert_eq!(public_text(&load_or_create(&dir).unwrap().key()), public_text(&rotated));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_readable_key_is_refused_with_the_fix() {
        let dir = scratch("mode");
        load_or_create(&dir).unwrap();
        std::fs::set_permissions(key_path(&dir), std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = load_or_create(&dir).err().unwrap().to_string();
        assert!(error.contains("has mode 644") && error.contains("chmod 600"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
