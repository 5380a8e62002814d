//! Console sessions: a sign-in with an API token becomes a random session id in an `HttpOnly`
//! cookie, with its own CSRF token, expiring. Kept in memory only (a restart signs everyone out);
//! bounded, so a flood of sign-ins cannot grow it. Time is an argument.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use crate::service::access::Role;

/// The most sessions held at once; past it, the one closest to expiring goes first.
pub const MAX_SESSIONS: usize = 10_000;

/// The session cookie's name.
pub const COOKIE: &str = "cordon_session";

/// A signed-in operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// The operator's name as the audit trail records it.
    pub operator: String,
    pub role: Role,
    /// Every form of this session carries it; a POST without it changes nothing.
    pub csrf: String,
    pub expires_at_ms: i64,
}

/// Every open session, by id.
#[derive(Debug)]
pub struct Sessions {
    by_id: Mutex<HashMap<String, Session>>,
    lifetime_ms: i64,
}

/// 32 random bytes, in hex.
fn random_id() -> String {
    crate::service::outbox::hex(&cordon_wire::generate_signing_key().to_bytes())
}

impl Sessions {
    pub fn new(lifetime_minutes: u64) -> Sessions {
        let lifetime_ms = i64::try_from(lifetime_minutes.saturating_mul(60_000)).unwrap_or(i64::MAX);
        Sessions { by_id: Mutex::default(), lifetime_ms }
    }

    /// How long a session lasts, in seconds (the cookie's Max-Age).
    pub fn lifetime_seconds(&self) -> i64 {
        self.lifetime_ms / 1_000
    }

    /// Opens a session for `operator`; returns its id.
    pub fn open(&self, operator: &str, role: Role, now_ms: i64) -> String {
        let mut sessions = self.by_id.lock().unwrap_or_else(PoisonError::into_inner);
        sessions.retain(|_, session| session.expires_at_ms > now_ms);
        if sessions.len() >= MAX_SESSIONS {
            let soonest = sessions.iter().min_by_key(|(_, s)| s.expires_at_ms).map(|(id, _)| id.clone());
            if let Some(id) = soonest {
                sessions.remove(&id);
            }
        }
        let id = random_id();
        let session = Session {
            operator: operator.to_owned(),
            role,
            csrf: random_id(),
            expires_at_ms: now_ms.saturating_add(self.lifetime_ms),
        };
        sessions.insert(id.clone(), session);
        id
    }

    /// The session `id` names, unless it expired (then it is forgotten).
    pub fn get(&self, id: &str, now_ms: i64) -> Option<Session> {
        let mut sessions = self.by_id.lock().unwrap_or_else(PoisonError::into_inner);
        match sessions.get(id) {
            Some(session) if session.expires_at_ms > now_ms => Some(session.clone()),
            Some(_) => {
                sessions.remove(id);
                None
            }
            None => None,
        }
    }

    /// Signs the session out.
    pub fn close(&self, id: &str) {
        self.by_id.lock().unwrap_or_else(PoisonError::into_inner).remove(id);
    }

    pub fn len(&self) -> usize {
        self.by_id.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether two secrets are equal, in time that does not depend on where they differ.
pub fn same_secret(given: &str, expected: &str) -> bool {
    let (given, expected) = (given.as_bytes(), expected.as_bytes());
    given.len() == expected.len() && given.iter().zip(expected).fold(0u8, |diff, (a, b)| diff | (a ^ b)) == 0
}

/// The session id in a `Cookie` header, if any.
pub fn id_from_cookies(header: &str) -> Option<&str> {
    header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
        .filter(|value| value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The `Set-Cookie` value that holds `id` for `max_age` seconds (0: removes it).
pub fn cookie(id: &str, max_age: i64, secure: bool) -> String {
    format!(
        "{COOKIE}={id}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
        if secure { "; Secure" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_lasts_its_lifetime_and_has_its_own_csrf_token() {
        let sessions = Sessions::new(60);
        let id = sessions.open("alice", Role::Responder, 1_000);
        assert_eq!(id.len(), 64);
        let session = sessions.get(&id, 1_000 + 3_599_999).expect("open");
        assert_eq!((session.operator.as_str(), session.role), ("alice", Role::Responder));
        assert_ne!(session.csrf, id);
        assert_eq!(sessions.get(&id, 1_000 + 3_600_000), None, "expired");
        assert!(sessions.is_empty(), "an expired session is forgotten");
        let other = sessions.open("bob", Role::Viewer, 0);
        sessions.close(&other);
        assert_eq!(sessions.get(&other, 1), None, "signed out");
        assert_eq!(sessions.get("not-a-session", 1), None);
    }

    #[test]
    fn sessions_are_bounded() {
        let sessions = Sessions::new(60);
        let first = sessions.open("a", Role::Viewer, 0);
        for n in 1..=MAX_SESSIONS {
            sessions.open("a", Role::Viewer, i64::try_from(n).unwrap());
        }
        assert_eq!(sessions.len(), MAX_SESSIONS);
        let later = i64::try_from(MAX_SESSIONS).unwrap() + 1;
        assert_eq!(sessions.get(&first, later), None, "the oldest went first");
    }

    #[test]
    fn the_cookie_is_read_only_when_well_formed() {
        let id = "ab".repeat(32);
        assert_eq!(id_from_cookies(&format!("x=1; {COOKIE}={id}; y=2")), Some(id.as_str()));
        assert_eq!(id_from_cookies(&format!("{COOKIE}=../../etc")), None);
        assert_eq!(id_from_cookies("other=1"), None);
        assert!(cookie(&id, 60, true).ends_with("HttpOnly; SameSite=Strict; Max-Age=60; Secure"));
        assert!(same_secret("abc", "abc") && !same_secret("abc", "abd") && !same_secret("abc", "ab"));
    }
}
