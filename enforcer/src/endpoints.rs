//! The addresses of the agent's management endpoints (brokers, the brokers the cluster
//! advertises, OTLP collectors), remembered in `<state dir>/endpoints.json` each time a name
//! resolves: while its host is isolated the agent may have no working DNS, and a restart, a
//! reboot or a key rotation must still reconnect. A name that does not resolve is never fatal
//! while its addresses are known.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Known addresses by `host:port`, as last resolved.
pub struct Endpoints {
    path: PathBuf,
    known: BTreeMap<String, Vec<SocketAddr>>,
    changed: bool,
}

/// How an endpoint's addresses were found.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    Resolved(Vec<SocketAddr>),
    /// The name did not resolve now (the error, in words); these are the addresses it had.
    Remembered(Vec<SocketAddr>, String),
}

impl Found {
    pub fn addresses(&self) -> &[SocketAddr] {
        match self {
            Found::Resolved(addresses) | Found::Remembered(addresses, _) => addresses,
        }
    }
}

impl Endpoints {
    /// The remembered addresses (none if the file is missing or unreadable: they are relearned).
    pub fn load(state_dir: &Path) -> Endpoints {
        let path = state_dir.join("endpoints.json");
        let known = std::fs::read(&path).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok()).unwrap_or_default();
        Endpoints { path, known, changed: false }
    }

    /// Resolves `endpoint` (`host:port`), remembering what it resolves to; if it does not
    /// resolve, the addresses it had last time.
    pub fn find(&mut self, endpoint: &str) -> Result<Found> {
        self.find_with(endpoint, |endpoint| endpoint.to_socket_addrs().map(Iterator::collect))
    }

    fn find_with(
        &mut self,
        endpoint: &str,
        resolve: impl FnOnce(&str) -> std::io::Result<Vec<SocketAddr>>,
    ) -> Result<Found> {
        match resolve(endpoint) {
            Ok(addresses) if !addresses.is_empty() => {
                if self.known.get(endpoint) != Some(&addresses) {
                    self.known.insert(endpoint.to_owned(), addresses.clone());
                    self.changed = true;
                }
                Ok(Found::Resolved(addresses))
            }
            result => {
                let problem = match result {
                    Ok(_) => "it resolves to no address".to_owned(),
                    Err(error) => error.to_string(),
                };
                match self.known.get(endpoint) {
                    Some(addresses) => Ok(Found::Remembered(addresses.clone(), problem)),
                    None => Err(anyhow::anyhow!(
                        "cannot resolve management endpoint '{endpoint}' (expected host:port): {problem}; no \
                         address of it is remembered yet"
                    )),
                }
            }
        }
    }

    /// The bootstrap list for the Kafka client: each broker by name while the name resolves, by
    /// its remembered addresses when it does not (the client would fail on the name).
    pub fn bootstrap(&mut self, brokers: &[String]) -> String {
        let mut list = Vec::new();
        for broker in brokers {
            match self.find(broker) {
                Ok(Found::Remembered(addresses, _)) => list.extend(addresses.iter().map(ToString::to_string)),
                Ok(Found::Resolved(_)) | Err(_) => list.push(broker.clone()),
            }
        }
        list.join(",")
    }

    pub fn knows(&self, endpoint: &str) -> bool {
        self.known.contains_key(endpoint)
    }

    /// Endpoints remembered besides `named` (brokers the cluster advertised).
    pub fn others(&self, named: &[String]) -> Vec<String> {
        self.known.keys().filter(|endpoint| !named.contains(endpoint)).cloned().collect()
    }

    /// Writes what changed (atomically: a crash leaves the old file or the new one).
    pub fn save(&mut self) -> Result<()> {
        if !self.changed {
            return Ok(());
        }
        let next = self.path.with_extension("json.new");
        std::fs::write(&next, serde_json::to_vec_pretty(&self.known)?)
            .and_then(|()| std::fs::rename(&next, &self.path))
            .with_context(|| format!("cannot write {}", self.path.display()))?;
        self.changed = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_that_stops_resolving_keeps_its_last_addresses_across_restarts() {
        let dir = std::env::temp_dir().join(format!("cordon-endpoints-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let address: SocketAddr = "192.0.2.7:9092".parse().unwrap();
        let mut endpoints = Endpoints::load(&dir);
        let found = endpoints.find_with("broker-1:9092", |_| Ok(vec![address])).unwrap();
        assert_eq!(found, Found::Resolved(vec![address]));
        endpoints.save().unwrap();
        // Restarted while isolated, with no DNS.
        let mut endpoints = Endpoints::load(&dir);
        let no_dns = || Err(std::io::Error::other("failed to lookup address information"));
        let found = endpoints.find_with("broker-1:9092", |_| no_dns()).unwrap();
        assert_eq!(found.addresses(), [address]);
        assert!(matches!(found, Found::Remembered(_, ref problem) if problem.contains("failed to lookup")));
        let error = endpoints.find_with("broker-2:9092", |_| no_dns()).unwrap_err().to_string();
        assert!(error.contains("'broker-2:9092'") && error.contains("no address of it is remembered"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
