//! How both binaries reach Kafka securely: `[kafka.tls]` (TLS, mutual with a client
//! certificate), `[kafka.sasl]` (PLAIN, SCRAM-SHA-256/512, the password read from a file) and
//! `[kafka.settings]` (other librdkafka settings, refused for the ones cordon owns), turned into
//! librdkafka client settings. Pure apart from reading the password file and checking files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// `[kafka.tls]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaTls {
    /// The CA (PEM) that issued the brokers' certificates; the system's CAs when absent.
    pub ca_file: Option<PathBuf>,
    /// This client's certificate and key (PEM) for mutual TLS: both or neither; the key
    /// readable by its owner only.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// `[kafka.sasl]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSasl {
    /// `PLAIN` (only over TLS), `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub mechanism: String,
    pub username: String,
    /// The password, in a file readable by its owner only (never in the config file).
    pub password_file: PathBuf,
}

/// librdkafka settings cordon sets itself: `[kafka.settings]` may not name them (nor any
/// `ssl.` or `sasl.` setting, which `[kafka.tls]` and `[kafka.sasl]` own).
pub const OWNED_SETTINGS: &[&str] = &[
    "bootstrap.servers",
    "security.protocol",
    "group.id",
    "group.instance.id",
    "enable.auto.commit",
    "auto.offset.reset",
    "partitioner",
    "enable.idempotence",
    "message.max.bytes",
    "message.timeout.ms",
    "statistics.interval.ms",
    "fetch.wait.max.ms",
    "linger.ms",
    "session.timeout.ms",
];

/// The librdkafka settings for `tls`, `sasl` and the pass-through `settings`, or every problem
/// with them at once, in one message (`section` names the config section, e.g. `[kafka]`).
pub fn client_settings(
    tls: Option<&KafkaTls>,
    sasl: Option<&KafkaSasl>,
    settings: &BTreeMap<String, String>,
    section: &str,
) -> Result<Vec<(String, String)>, String> {
    problems_of(tls, sasl, settings, section)
        .map_err(|problems| format!("{section}: {} problem(s):\n  - {}", problems.len(), problems.join("\n  - ")))
}

fn problems_of(
    tls: Option<&KafkaTls>,
    sasl: Option<&KafkaSasl>,
    settings: &BTreeMap<String, String>,
    section: &str,
) -> Result<Vec<(String, String)>, Vec<String>> {
    let mut problems = Vec::new();
    let mut out: Vec<(String, String)> = Vec::new();
    let protocol = match (tls.is_some(), sasl.is_some()) {
        (false, false) => None,
        (true, false) => Some("ssl"),
        (false, true) => Some("sasl_plaintext"),
        (true, true) => Some("sasl_ssl"),
    };
    if let Some(protocol) = protocol {
        out.push(("security.protocol".into(), protocol.into()));
    }
    if let Some(tls) = tls {
        if let Some(ca) = &tls.ca_file {
            check_readable(ca, &format!("{section}.tls ca_file"), &mut problems);
            out.push(("ssl.ca.location".into(), ca.display().to_string()));
        }
        match (&tls.cert_file, &tls.key_file) {
            (Some(cert), Some(key)) => {
                check_readable(cert, &format!("{section}.tls cert_file"), &mut problems);
                problems.extend(crate::secret::check_private(key, &format!("{section}.tls key_file")).err());
                out.push(("ssl.certificate.location".into(), cert.display().to_string()));
                out.push(("ssl.key.location".into(), key.display().to_string()));
            }
            (None, None) => {}
            _ => problems.push(format!("{section}.tls needs both cert_file and key_file (mutual TLS), or neither")),
        }
    }
    if let Some(sasl) = sasl {
        match sasl.mechanism.as_str() {
            "PLAIN" if tls.is_none() => problems.push(format!(
                "{section}.sasl mechanism PLAIN sends the password in the clear: add {section}.tls, or use SCRAM-SHA-256/512"
            )),
            "PLAIN" | "SCRAM-SHA-256" | "SCRAM-SHA-512" => {}
            other => problems.push(format!(
                "{section}.sasl mechanism {other:?} is not one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"
            )),
        }
        if sasl.username.is_empty() {
            problems.push(format!("{section}.sasl username is empty"));
        }
        problems.extend(crate::secret::check_private(&sasl.password_file, &format!("{section}.sasl password_file")).err());
        match std::fs::read_to_string(&sasl.password_file) {
            Ok(password) if !password.trim_end_matches(['\n', '\r']).is_empty() => {
                out.push(("sasl.mechanisms".into(), sasl.mechanism.clone()));
                out.push(("sasl.username".into(), sasl.username.clone()));
                out.push(("sasl.password".into(), password.trim_end_matches(['\n', '\r']).to_owned()));
            }
            Ok(_) => problems.push(format!("{section}.sasl password_file {} is empty", sasl.password_file.display())),
            Err(_) => {} // said by check_private
        }
    }
    for (key, value) in settings {
        if OWNED_SETTINGS.contains(&key.as_str()) || key.starts_with("ssl.") || key.starts_with("sasl.") {
            problems.push(format!(
                "{section}.settings may not set {key:?}: cordon sets it (TLS and SASL go in {section}.tls and {section}.sasl)"
            ));
        } else {
            out.push((key.clone(), value.clone()));
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

fn check_readable(path: &Path, what: &str, problems: &mut Vec<String>) {
    if let Err(error) = std::fs::metadata(path) {
        problems.push(format!("{what} {}: {error}", path.display()));
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cordon-kafka-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn private(path: &Path, text: &str) {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    #[test]
    fn mutual_tls_and_scram_become_librdkafka_settings() {
        let dir = scratch("ok");
        let (ca, cert, key, password) =
            (dir.join("ca.pem"), dir.join("client.pem"), dir.join("client.key"), dir.join("password"));
        std::fs::write(&ca, "ca").unwrap();
        std::fs::write(&cert, "cert").unwrap();
        private(&key, "key");
        private(&password, "s3cret\n");
        let tls = KafkaTls { ca_file: Some(ca.clone()), cert_file: Some(cert.clone()), key_file: Some(key.clone()) };
        let sasl =
            KafkaSasl { mechanism: "SCRAM-SHA-512".into(), username: "cordon".into(), password_file: password };
        let extra = BTreeMap::from([("socket.keepalive.enable".to_owned(), "true".to_owned())]);
        let settings = client_settings(Some(&tls), Some(&sasl), &extra, "[kafka]").unwrap();
        let get = |key: &str| settings.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
        assert_eq!(get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(get("ssl.ca.location"), Some(ca.to_str().unwrap()));
        assert_eq!(get("ssl.key.location"), Some(key.to_str().unwrap()));
        assert_eq!(get("sasl.password"), Some("s3cret"));
        assert_eq!(get("socket.keepalive.enable"), Some("true"));
        assert_eq!(client_settings(None, None, &BTreeMap::new(), "[kafka]").unwrap(), vec![]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn every_problem_is_named_at_once() {
        let dir = scratch("bad");
        let (key, password) = (dir.join("client.key"), dir.join("password"));
        std::fs::write(&key, "key").unwrap(); // 0644 by default umask
        std::fs::write(&password, "p").unwrap();
        let tls = KafkaTls { ca_file: Some(dir.join("missing.pem")), cert_file: None, key_file: Some(key) };
        let sasl = KafkaSasl { mechanism: "GSSAPI".into(), username: String::new(), password_file: password };
        let extra = BTreeMap::from([
            ("security.protocol".to_owned(), "plaintext".to_owned()),
            ("ssl.endpoint.identification.algorithm".to_owned(), "none".to_owned()),
        ]);
        let all = client_settings(Some(&tls), Some(&sasl), &extra, "[kafka]").unwrap_err();
        assert!(all.starts_with("[kafka]: 7 problem(s):"), "{all}");
        for expected in [
            "ca_file",
            "both cert_file and key_file",
            "\"GSSAPI\" is not one of",
            "username is empty",
            "password_file",
            "may not set \"security.protocol\"",
            "may not set \"ssl.endpoint.identification.algorithm\"",
        ] {
            assert!(all.contains(expected), "{expected} missing from:\n{all}");
        }
        let plain = KafkaSasl { mechanism: "PLAIN".into(), username: "u".into(), password_file: dir.join("password") };
        let problems = client_settings(None, Some(&plain), &BTreeMap::new(), "[kafka]").unwrap_err();
        assert!(problems.contains("in the clear"), "{problems:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
