//! `cordon keygen`: the command-signing key pair, and the owner-only secret files the service
//! creates (the key, the shared API token).

use anyhow::{Context, Result};

/// `cordon keygen --out DIR`: a new Ed25519 key pair for signing commands.
pub fn keygen(dir: &std::path::Path) -> Result<()> {
    let key = cordon_wire::generate_signing_key();
    let secret = dir.join("signing.key");
    write_secret(&secret, &cordon_wire::key_to_base64(&key.to_bytes()))
        .with_context(|| format!("cannot create {} (it must not exist yet)", secret.display()))?;
    std::fs::write(
        dir.join("signing.pub"),
        format!("{}\n", cordon_wire::key_to_base64(key.verifying_key().as_bytes())),
    )
    .with_context(|| format!("cannot write {}/signing.pub", dir.display()))?;
    Ok(())
}

/// Creates `path` (and its directory) readable by its owner only; fails if it exists.
pub(crate) fn write_secret(path: &std::path::Path, text: &str) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    writeln!(file, "{text}")?;
    Ok(())
}
