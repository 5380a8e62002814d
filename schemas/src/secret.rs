//! Secret files (signing keys, agent keys, tokens, TLS keys, passwords): both binaries refuse
//! one that others on the machine can read, with the command that fixes it.

use std::path::Path;

/// `Ok` when only its owner can read `path`; otherwise what is wrong, naming it as `what`.
pub fn check_private(path: &Path, what: &str) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt as _;
    let metadata = std::fs::metadata(path).map_err(|error| format!("{what} {}: {error}", path.display()))?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{what} {} has mode {mode:03o}: others on this machine could read it; run `chmod 600 {}`",
            path.display(),
            path.display()
        ));
    }
    Ok(())
}
