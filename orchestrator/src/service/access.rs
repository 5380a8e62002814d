//! Who may call the operator API, and what they may do: tokens that each name their operator
//! and role (`[api] tokens_file`), or the one shared token of `[api] token_file`; failed
//! attempts limited per source address. Pure apart from reading the tokens file.
//!
//! Roles, each allowed what the one before it is: `viewer` reads (hosts, agents); `responder`
//! isolates, releases, approves, denies and tags; `admin` enrolls, accepts and revokes agent keys.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use sha2::Digest as _;

/// What a token allows, least first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Responder,
    Admin,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Responder => "responder",
            Role::Admin => "admin",
        }
    }
}

/// Whoever holds a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operator {
    pub name: String,
    pub role: Role,
    /// The name is the token's (from the tokens file), not what the client claims.
    pub named_by_token: bool,
}

/// `[api] tokens_file`: TOML, one `[[token]]` per operator.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    operator: String,
    role: Role,
    /// Hex SHA-256 of the token (`cordon token new` prints both): the file holds no secret.
    sha256: String,
}

/// The tokens the API accepts, by the SHA-256 of the token.
#[derive(Clone, Debug)]
pub struct Tokens {
    by_digest: HashMap<[u8; 32], Operator>,
}

fn digest(token: &str) -> [u8; 32] {
    sha2::Sha256::digest(token.as_bytes()).into()
}

/// A new random token (printable, 43 characters) and the hex SHA-256 to put in the tokens file.
pub fn new_token() -> (String, String) {
    let bytes = cordon_wire::generate_signing_key().to_bytes();
    let token = cordon_wire::key_to_base64(&bytes).trim_end_matches('=').replace(['+', '/'], "-");
    let sha256 = super::outbox::hex(&digest(&token));
    (token, sha256)
}

impl Tokens {
    /// The single shared token of `[api] token_file`: an admin whose name is what the client says.
    pub fn shared(token: &str) -> Tokens {
        let operator = Operator { name: String::new(), role: Role::Admin, named_by_token: false };
        Tokens { by_digest: HashMap::from([(digest(token), operator)]) }
    }

    /// Reads a tokens file; reports every problem in it at once.
    pub fn load(path: &Path) -> Result<Tokens> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the API tokens file {}", path.display()))?;
        Tokens::parse(&text).map_err(|problems| {
            anyhow::anyhow!("{}: {} problem(s):\n  - {}", path.display(), problems.len(), problems.join("\n  - "))
        })
    }

    fn parse(text: &str) -> Result<Tokens, Vec<String>> {
        let file: TokensFile = toml::from_str(text).map_err(|e| vec![e.to_string().trim_end().to_owned()])?;
        let mut problems = Vec::new();
        let mut by_digest = HashMap::new();
        let mut names = std::collections::HashSet::new();
        for (index, entry) in file.token.into_iter().enumerate() {
            let at = format!("token {} ({:?})", index + 1, entry.operator);
            let name_ok = !entry.operator.is_empty()
                && entry.operator.len() <= 64
                && entry.operator.chars().all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c));
            if !name_ok {
                problems.push(format!("{at}: operator must be 1 to 64 of A-Z a-z 0-9 . _ - @"));
            }
            if !names.insert(entry.operator.clone()) {
                problems.push(format!("{at}: operator named twice (one token per operator)"));
            }
            let bytes: Option<Vec<u8>> = (entry.sha256.len() == 64)
                .then(|| (0..32).map(|i| u8::from_str_radix(&entry.sha256[i * 2..i * 2 + 2], 16).ok()).collect())
                .flatten();
            match bytes.and_then(|b| <[u8; 32]>::try_from(b).ok()) {
                None => problems.push(format!("{at}: sha256 must be 64 hex digits (cordon token new prints it)")),
                Some(key) => {
                    let operator = Operator { name: entry.operator, role: entry.role, named_by_token: true };
                    if by_digest.insert(key, operator).is_some() {
                        problems.push(format!("{at}: the same token as another entry"));
                    }
                }
            }
        }
        if by_digest.is_empty() && problems.is_empty() {
            problems.push("no [[token]] entries: nobody could use the API".into());
        }
        if problems.is_empty() {
            Ok(Tokens { by_digest })
        } else {
            Err(problems)
        }
    }

    /// Who holds `token`, if anyone. Compares digests, so the time taken says nothing about how
    /// much of a guess was right.
    pub fn holder(&self, token: &str) -> Option<&Operator> {
        self.by_digest.get(&digest(token))
    }
}

/// Refuses a file that others may write (they could add a token of their own), saying how to
/// fix it.
pub fn check_not_writable_by_others(path: &Path, what: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let metadata = std::fs::metadata(path).with_context(|| format!("cannot read {what} {}", path.display()))?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o022 != 0 {
        bail!(
            "{what} {} has mode {mode:03o}: others could add a token of their own; run `chmod go-w {}`",
            path.display(),
            path.display()
        );
    }
    Ok(())
}

/// Refuses a secret file that others may read (or write), saying how to fix it.
pub fn check_private(path: &Path, what: &str) -> Result<()> {
    cordon_wire::secret::check_private(path, what)
        .map_err(|problem| anyhow::anyhow!("{problem} (and replace the secret if someone did)"))
}

/// Wrong tokens per source address: after [`FailedAttempts::LIMIT`] in a minute, the source is
/// answered 429 until the minute is over, without its token being checked. (A request with no
/// token at all is a mistake, not a guess: it is answered 401 and not counted.)
#[derive(Default)]
pub struct FailedAttempts {
    by_source: HashMap<IpAddr, (i64, u32)>,
}

impl FailedAttempts {
    pub const LIMIT: u32 = 20;
    const WINDOW_MS: i64 = 60_000;
    /// The most sources remembered (a flood from many addresses forgets the oldest window).
    const MAX_SOURCES: usize = 10_000;

    /// Whether `source` has used up its attempts for now.
    pub fn blocked(&self, source: IpAddr, now: i64) -> bool {
        self.by_source
            .get(&source)
            .is_some_and(|(since, count)| now - since < Self::WINDOW_MS && *count >= Self::LIMIT)
    }

    pub fn failed(&mut self, source: IpAddr, now: i64) {
        if self.by_source.len() >= Self::MAX_SOURCES && !self.by_source.contains_key(&source) {
            self.by_source.retain(|_, (since, _)| now - *since < Self::WINDOW_MS);
            if self.by_source.len() >= Self::MAX_SOURCES {
                self.by_source.clear();
            }
        }
        let entry = self.by_source.entry(source).or_insert((now, 0));
        if now - entry.0 >= Self::WINDOW_MS {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tokens_file_names_each_operator_and_role() {
        let (alice, alice_hash) = new_token();
        let (bob, bob_hash) = new_token();
        let text = format!(
            "[[token]]\noperator = \"alice\"\nrole = \"responder\"\nsha256 = \"{alice_hash}\"\n\
             [[token]]\noperator = \"bob\"\nrole = \"viewer\"\nsha256 = \"{bob_hash}\"\n"
        );
        let tokens = Tokens::parse(&text).unwrap();
        let holder = tokens.holder(&alice).unwrap();
        assert_eq!((holder.name.as_str(), holder.role, holder.named_by_token), ("alice", Role::Responder, true));
        assert_eq!(tokens.holder(&bob).unwrap().role, Role::Viewer);
        assert!(tokens.holder("not a token").is_none());
        assert!(Role::Viewer < Role::Responder && Role::Responder < Role::Admin);
    }

    #[test]
    fn every_problem_in_a_tokens_file_is_named() {
        let (_, hash) = new_token();
        let text = format!(
            "[[token]]\noperator = \"a b\"\nrole = \"viewer\"\nsha256 = \"xyz\"\n\
             [[token]]\noperator = \"c\"\nrole = \"admin\"\nsha256 = \"{hash}\"\n\
             [[token]]\noperator = \"c\"\nrole = \"admin\"\nsha256 = \"{hash}\"\n"
        );
        let problems = Tokens::parse(&text).unwrap_err();
        assert_eq!(problems.len(), 4, "{problems:#?}");
        assert!(problems[0].contains("operator must be"), "{problems:#?}");
        assert!(problems[1].contains("64 hex digits"), "{problems:#?}");
        assert!(problems.iter().any(|p| p.contains("named twice")), "{problems:#?}");
        assert!(problems.iter().any(|p| p.contains("the same token")), "{problems:#?}");
        let unknown = Tokens::parse("[[token]]\noperator = \"a\"\nrole = \"root\"\nsha256 = \"\"\n").unwrap_err();
        assert!(unknown[0].contains("unknown variant `root`"), "{unknown:?}");
        assert!(Tokens::parse("").unwrap_err()[0].contains("nobody could use the API"));
    }

    #[test]
    fn failed_attempts_block_a_source_for_the_rest_of_the_minute() {
        let mut attempts = FailedAttempts::default();
        let (source, other): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        for _ in 0..FailedAttempts::LIMIT {
            assert!(!attempts.blocked(source, 1_000));
            attempts.failed(source, 1_000);
        }
        assert!(attempts.blocked(source, 30_000));
        assert!(!attempts.blocked(other, 30_000));
        assert!(!attempts.blocked(source, 61_000), "a new minute");
    }
}
