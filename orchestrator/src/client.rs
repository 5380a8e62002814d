//! The operator commands of `cordon` (`isolate`, `release`, `approve`, `deny`, `hosts`, `host`,
//! `tag`, `agents`, `policy`): clients of the API that `cordon serve` offers, printing for a person or, with
//! `--json`, for a program.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::{
    AgentKeyView, EnrollRequest, ErrorBody, ExtendRequest, HostView, IsolateRequest, PolicyDiff, PolicyHistoryEntry, PolicyView,
    ReasonRequest, RevertPolicyRequest, SetPolicyRequest, TagsRequest, OPERATOR_HEADER, PREFIX,
};
use crate::service::profiles::{format_seconds, IsolationPolicy};

/// Where the API is and how to authenticate to it.
#[derive(Debug, clap::Args)]
pub struct Connection {
    /// The API's base URL.
    #[arg(long, env = "CORDON_API", default_value = "http://127.0.0.1:8700", global = true)]
    pub api: String,
    /// A file holding the API token (the service's `[api] token_file`). Or set `CORDON_TOKEN`.
    #[arg(long, value_name = "FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// Your name in the audit trail (default: $USER); ignored when your token names you.
    #[arg(long, global = true)]
    pub operator: Option<String>,
    /// Trust only this CA (PEM) for an https:// API (the service's `[api] tls_cert_file`, or the
    /// CA that issued it); without it, the public CAs.
    #[arg(long, env = "CORDON_CA_FILE", value_name = "FILE", global = true)]
    pub ca_file: Option<PathBuf>,
}

/// An error the API answered with: its status and what it said.
#[derive(Debug)]
pub struct ApiRefusal {
    pub status: u16,
    pub body: ErrorBody,
}

impl std::fmt::Display for ApiRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (HTTP {})", self.body.error, self.status)?;
        for problem in &self.body.problems {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiRefusal {}

struct Client {
    base: String,
    token: String,
    operator: String,
    agent: ureq::Agent,
}

impl Client {
    fn new(connection: &Connection) -> Result<Client> {
        let token = match (&connection.token_file, std::env::var("CORDON_TOKEN")) {
            (Some(file), _) => std::fs::read_to_string(file)
                .with_context(|| format!("cannot read the API token file {}", file.display()))?,
            (None, Ok(token)) if !token.trim().is_empty() => token,
            (None, _) => bail!(
                "no API token: pass --token-file FILE (the service's [api] token_file, by default \
                 <state dir>/api-token) or set CORDON_TOKEN"
            ),
        };
        let operator = connection
            .operator
            .clone()
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "unnamed".into());
        let mut config =
            ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(30)));
        if let Some(ca_file) = &connection.ca_file {
            config = config.tls_config(trusting(ca_file)?);
        }
        let agent = config.build().into();
        Ok(Client {
            base: connection.api.trim_end_matches('/').to_owned(),
            token: token.trim().to_owned(),
            operator,
            agent,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{PREFIX}{path}", self.base)
    }

    fn answer<T: DeserializeOwned>(
        &self,
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<T> {
        let mut response = result.map_err(|error| {
            anyhow::anyhow!("cannot reach the cordon API at {}: {error} (is `cordon serve` running? see --api / CORDON_API)", self.base)
        })?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().context("cannot read the API's answer")?;
        if (200..300).contains(&status) {
            return serde_json::from_str(&text)
                .with_context(|| format!("the API answered with something unexpected: {text}"));
        }
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|_| ErrorBody { error: text.trim().to_owned(), problems: Vec::new() });
        Err(ApiRefusal { status, body }.into())
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let request = self
            .agent
            .get(self.url(path))
            .header("authorization", format!("Bearer {}", self.token))
            .header(OPERATOR_HEADER, &self.operator);
        self.answer(request.call())
    }

    fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        let request = self
            .agent
            .post(self.url(path))
            .header("authorization", format!("Bearer {}", self.token))
            .header(OPERATOR_HEADER, &self.operator);
        self.answer(request.send_json(body))
    }
}

/// TLS that trusts only the certificates in `ca_file` (PEM).
fn trusting(ca_file: &std::path::Path) -> Result<ureq::tls::TlsConfig> {
    let pem = std::fs::read(ca_file).with_context(|| format!("cannot read the CA file {}", ca_file.display()))?;
    let mut certificates = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        if let ureq::tls::PemItem::Certificate(certificate) =
            item.with_context(|| format!("{} is not PEM", ca_file.display()))?
        {
            certificates.push(certificate);
        }
    }
    if certificates.is_empty() {
        bail!("{} holds no PEM certificate", ca_file.display());
    }
    Ok(ureq::tls::TlsConfig::builder().root_certs(ureq::tls::RootCerts::new_with_certs(&certificates)).build())
}

/// Percent-encodes a host id or tag for a URL path segment or query value.
pub(crate) fn encode(text: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// One operator command.
#[derive(Debug)]
pub enum Request {
    Isolate { host: String, request: IsolateRequest },
    Release { host: String, reason: Option<String> },
    Extend { host: String, request: ExtendRequest },
    Approve { host: String, reason: Option<String> },
    Deny { host: String, reason: Option<String> },
    Tag { host: String, tags: TagsRequest },
    Hosts { tag: Option<String>, state: Option<String> },
    Host { host: String },
}

/// Runs one operator command against the API and prints the outcome.
pub fn run(connection: &Connection, request: Request, json: bool, out: &mut impl Write) -> Result<()> {
    let client = Client::new(connection)?;
    let host_path = |host: &str, action: &str| format!("/hosts/{}{action}", encode(host));
    let (view, verb): (HostView, &str) = match request {
        Request::Isolate { host, request } => {
            (client.post(&host_path(&host, "/isolate"), &request)?, "isolation requested")
        }
        Request::Release { host, reason } => {
            (client.post(&host_path(&host, "/release"), &ReasonRequest { reason })?, "release requested")
        }
        Request::Extend { host, request } => (client.post(&host_path(&host, "/extend"), &request)?, "extended"),
        Request::Approve { host, reason } => {
            (client.post(&host_path(&host, "/approve"), &ReasonRequest { reason })?, "approved")
        }
        Request::Deny { host, reason } => {
            (client.post(&host_path(&host, "/deny"), &ReasonRequest { reason })?, "denied")
        }
        Request::Tag { host, tags } => (client.post(&host_path(&host, "/tags"), &tags)?, "tags changed"),
        Request::Host { host } => {
            let view: HostView = client.get(&host_path(&host, ""))?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&view)?)?;
            } else {
                print_host(&view, out)?;
            }
            return Ok(());
        }
        Request::Hosts { tag, state } => {
            let mut query = Vec::new();
            if let Some(tag) = tag {
                query.push(format!("tag={}", encode(&tag)));
            }
            if let Some(state) = state {
                query.push(format!("state={}", encode(&state)));
            }
            let path =
                if query.is_empty() { "/hosts".to_owned() } else { format!("/hosts?{}", query.join("&")) };
            let hosts: Vec<HostView> = client.get(&path)?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&hosts)?)?;
            } else {
                print_hosts(&hosts, out)?;
            }
            return Ok(());
        }
    };
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&view)?)?;
    } else {
        writeln!(out, "{}: {verb}; now {} (generation {}).", view.host, view.state, view.generation)?;
    }
    Ok(())
}

fn print_hosts(hosts: &[HostView], out: &mut impl Write) -> Result<()> {
    if hosts.is_empty() {
        writeln!(out, "No hosts.")?;
        return Ok(());
    }
    let width = hosts.iter().map(|h| h.host.len()).max().unwrap_or(4).max(4);
    writeln!(out, "{:width$}  {:20}  {:9}  {:24}  TAGS", "HOST", "STATE", "MODE", "EXPIRES AT")?;
    for host in hosts {
        let state = match (host.tampered.is_some(), host.agent.stale) {
            (true, _) => format!("{} (TAMPERED)", host.state),
            (false, true) => format!("{} (stale)", host.state),
            (false, false) => host.state.clone(),
        };
        writeln!(
            out,
            "{:width$}  {:20}  {:9}  {:24}  {}",
            host.host,
            state,
            host.mode.map_or("-", cordon_wire::IsolationMode::name),
            host.expires_at.as_deref().unwrap_or("-"),
            host.tags.join(", ")
        )?;
    }
    Ok(())
}

fn print_host(host: &HostView, out: &mut impl Write) -> Result<()> {
    writeln!(out, "Host:        {}", host.host)?;
    writeln!(out, "State:       {} (generation {})", host.state, host.generation)?;
    writeln!(out, "Mode:        {}", host.mode.map_or("-", cordon_wire::IsolationMode::name))?;
    writeln!(out, "Expires at:  {}", host.expires_at.as_deref().unwrap_or("-"))?;
    writeln!(out, "Tags:        {}", if host.tags.is_empty() { "-".into() } else { host.tags.join(", ") })?;
    if !host.rules.is_empty() {
        writeln!(out, "Decided by:  {}", host.rules.join(", "))?;
    }
    if let Some(pending) = &host.pending {
        writeln!(
            out,
            "Pending:     {} isolation{} requested by rules {} at {} ({} request(s)); `cordon approve {}` or `cordon deny {}`",
            pending.mode.name(),
            pending.duration_seconds.map(|s| format!(" for {s} s")).unwrap_or_default(),
            pending.rules.join(", "),
            pending.requested_at,
            pending.requests,
            host.host,
            host.host
        )?;
    }
    let agent = &host.agent;
    match &agent.last_seen {
        None => writeln!(out, "Agent:       never heard from")?,
        Some(seen) => writeln!(
            out,
            "Agent:       last seen {seen}{}; isolated: {}; generation {}; packets dropped {}, allowed {}",
            if agent.stale { " (STALE)" } else { "" },
            agent.isolated.map_or("?".into(), |i| i.to_string()),
            agent.generation.map_or("?".into(), |g| g.to_string()),
            agent.packets_dropped.unwrap_or(0),
            agent.packets_allowed.unwrap_or(0)
        )?,
    }
    if !agent.exclusions.is_empty() {
        writeln!(out, "Exclusions:  {}", agent.exclusions.join("; "))?;
    }
    if let Some(profile) = &host.profile {
        writeln!(out, "Profile:     {} (policy version {})", profile.name, profile.version)?;
    }
    if let Some(command) = &host.command {
        let answered = command.awaiting_answer_since.as_deref().map_or_else(
            || "answered".to_owned(),
            |since| format!("NOT answered yet (sent {since}, {} resend(s))", command.resends),
        );
        writeln!(out, "Command:     {} (generation {}), {answered}", command.action, command.generation)?;
        if command.action == "isolate" && !command.exclusions.is_empty() {
            writeln!(out, "Sent open:   {}", command.exclusions.join("; "))?;
        }
    }
    if let Some(error) = &host.last_error {
        writeln!(out, "Last error:  {error}")?;
    }
    if let Some(tampered) = &host.tampered {
        writeln!(
            out,
            "TAMPERED:    at {} (generation {}): {}; {}",
            tampered.at, tampered.generation, tampered.what, tampered.response
        )?;
    }
    if let Some(audit) = &host.audit {
        writeln!(out, "Audit trail:")?;
        for entry in audit {
            writeln!(
                out,
                "  {}  {}{} -> {}  by {} (generation {}){}: {}",
                entry.at,
                if entry.shadow { "[SHADOW] " } else { "" },
                entry.from,
                entry.to,
                entry.by,
                entry.generation,
                entry.event_id.as_deref().map(|e| format!(", event {e}")).unwrap_or_default(),
                entry.why
            )?;
        }
    }
    Ok(())
}

/// One `cordon agents` command.
#[derive(Debug)]
pub enum AgentsRequest {
    List,
    Enroll { host: String, key: String, reason: Option<String> },
    Accept { host: String, key: String, reason: Option<String> },
    Revoke { host: String, reason: Option<String> },
}

/// Runs one `cordon agents` command against the API and prints the outcome.
pub fn agents(
    connection: &Connection,
    request: AgentsRequest,
    json: bool,
    out: &mut impl Write,
) -> Result<()> {
    let client = Client::new(connection)?;
    let path = |host: &str, action: &str| format!("/agents/{}/{action}", encode(host));
    let (view, verb): (AgentKeyView, &str) = match request {
        AgentsRequest::List => {
            let agents: Vec<AgentKeyView> = client.get("/agents")?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&agents)?)?;
            } else {
                print_agents(&agents, out)?;
            }
            return Ok(());
        }
        AgentsRequest::Enroll { host, key, reason } => {
            (client.post(&path(&host, "enroll"), &EnrollRequest { key, reason })?, "enrolled")
        }
        AgentsRequest::Accept { host, key, reason } => {
            (client.post(&path(&host, "accept"), &EnrollRequest { key, reason })?, "accepted")
        }
        AgentsRequest::Revoke { host, reason } => {
            (client.post(&path(&host, "revoke"), &ReasonRequest { reason })?, "revoked")
        }
    };
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&view)?)?;
    } else {
        writeln!(out, "{}: agent key {} {verb}.", view.host, view.key.as_deref().unwrap_or("-"))?;
    }
    Ok(())
}

/// One `cordon policy` command.
#[derive(Debug)]
pub enum PolicyRequest {
    Show { version: Option<u64> },
    Set { file: PathBuf, reason: String, expected_version: Option<u64> },
    History,
    Diff { from: u64, to: Option<u64> },
    Revert { version: u64, reason: String, expected_version: Option<u64> },
}

/// The policy file `cordon policy set` reads and `cordon policy show` prints: TOML, one
/// `[[profiles]]` table per profile, the same fields as the API's JSON.
pub fn read_policy_file(path: &std::path::Path) -> Result<IsolationPolicy> {
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("cannot read the policy from standard input")?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("cannot read the policy file {}", path.display()))?
    };
    toml::from_str(&text).map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))
}

/// Runs one `cordon policy` command against the API and prints the outcome.
pub fn policy(connection: &Connection, request: PolicyRequest, json: bool, out: &mut impl Write) -> Result<()> {
    let client = Client::new(connection)?;
    let view: PolicyView = match request {
        PolicyRequest::Show { version } => match version {
            Some(version) => client.get(&format!("/policy/versions/{version}"))?,
            None => client.get("/policy")?,
        },
        PolicyRequest::Set { file, reason, expected_version } => {
            let policy = read_policy_file(&file)?;
            client.post("/policy/versions", &SetPolicyRequest { profiles: policy.profiles, reason, expected_version })?
        }
        PolicyRequest::Revert { version, reason, expected_version } => {
            client.post("/policy/revert", &RevertPolicyRequest { version, reason, expected_version })?
        }
        PolicyRequest::History => {
            let history: Vec<PolicyHistoryEntry> = client.get("/policy/history")?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&history)?)?;
                return Ok(());
            }
            for entry in &history {
                let reverted = entry.reverted_from.map(|v| format!(" (reverts to version {v})")).unwrap_or_default();
                writeln!(out, "version {}  {}  by {}{reverted}: {}", entry.version, entry.at, entry.author, entry.reason)?;
                for change in &entry.changes {
                    writeln!(out, "    {change}")?;
                }
            }
            return Ok(());
        }
        PolicyRequest::Diff { from, to } => {
            let path = match to {
                Some(to) => format!("/policy/diff?from={from}&to={to}"),
                None => format!("/policy/diff?from={from}"),
            };
            let diff: PolicyDiff = client.get(&path)?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&diff)?)?;
            } else if diff.changes.is_empty() {
                writeln!(out, "Versions {} and {} hold the same policy.", diff.from, diff.to)?;
            } else {
                writeln!(out, "From version {} to version {}:", diff.from, diff.to)?;
                for change in &diff.changes {
                    writeln!(out, "{change}")?;
                }
            }
            return Ok(());
        }
    };
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&view)?)?;
    } else {
        print_policy(&view, out)?;
    }
    Ok(())
}

/// The policy as a TOML file that `cordon policy set` reads back, under a header of comments.
fn print_policy(view: &PolicyView, out: &mut impl Write) -> Result<()> {
    writeln!(out, "# Isolation policy version {}, {} by {}: {}", view.version, view.at, view.author, view.reason)?;
    if let Some(from) = view.reverted_from {
        writeln!(out, "# (restores version {from})")?;
    }
    writeln!(
        out,
        "# Edit and apply: cordon policy set FILE --reason TEXT --expected-version {}",
        view.version
    )?;
    for profile in &view.profiles {
        writeln!(out, "# {}: automatic isolations last {}", profile.name, format_seconds(profile.automatic_duration_seconds))?;
    }
    writeln!(out)?;
    let policy = IsolationPolicy { profiles: view.profiles.clone() };
    write!(out, "{}", toml::to_string(&policy).context("cannot write the policy as TOML")?)?;
    Ok(())
}

/// `cordon shadow report`: what the shadow rules would have done since `since`.
pub fn shadow_report(connection: &Connection, since: &str, json: bool, out: &mut impl Write) -> Result<()> {
    parse_for(since).map_err(|problem| ApiRefusal {
        status: 400,
        body: ErrorBody { error: format!("--since {since:?}: {problem}"), problems: Vec::new() },
    })?;
    let client = Client::new(connection)?;
    let report: crate::api::ShadowReport = client.get(&format!("/shadow?since={}", encode(since)))?;
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "Shadow decisions since {}: {} ({} host(s), {} rule(s)). Nothing of it was done.",
        report.since,
        report.decisions,
        report.hosts.len(),
        report.rules.len()
    )?;
    if report.hosts.is_empty() {
        return Ok(());
    }
    let width = report.hosts.iter().map(|h| h.host.len()).max().unwrap_or(4).max(4);
    writeln!(out, "\n{:width$}  {:>9}  {:30}  {:24}  RULES", "HOST", "DECISIONS", "WOULD", "LAST")?;
    for host in &report.hosts {
        writeln!(
            out,
            "{:width$}  {:>9}  {:30}  {:24}  {}",
            host.host,
            host.decisions,
            host.would.join(", "),
            host.last,
            host.rules.join(", ")
        )?;
    }
    writeln!(out, "\n{:30}  {:>9}  HOSTS", "RULE", "DECISIONS")?;
    for rule in &report.rules {
        writeln!(out, "{:30}  {:>9}  {}", rule.rule, rule.decisions, rule.hosts)?;
    }
    Ok(())
}

/// A key as `--key` names it: a file holding it, or `-` for standard input.
pub fn read_key_argument(argument: &str) -> Result<String> {
    let text = if argument == "-" {
        std::io::read_to_string(std::io::stdin()).context("cannot read the key from standard input")?
    } else {
        std::fs::read_to_string(argument).with_context(|| format!("cannot read the key file {argument}"))?
    };
    Ok(text.trim().to_owned())
}

fn print_agents(agents: &[AgentKeyView], out: &mut impl Write) -> Result<()> {
    if agents.is_empty() {
        writeln!(out, "No agent keys enrolled or claimed.")?;
        return Ok(());
    }
    let width = agents.iter().map(|a| a.host.len()).max().unwrap_or(4).max(4);
    writeln!(out, "{:width$}  {:8}  {:44}  CHANGED", "HOST", "STATE", "KEY")?;
    for agent in agents {
        writeln!(
            out,
            "{:width$}  {:8}  {:44}  {}",
            agent.host,
            agent.state,
            agent.key.as_deref().unwrap_or("-"),
            match (&agent.changed_at, &agent.changed_by) {
                (Some(at), Some(by)) => format!("{at} by {by}"),
                _ => "-".to_owned(),
            }
        )?;
        if let Some(claim) = &agent.claim {
            writeln!(
                out,
                "{:width$}  claimed by {} ({}; first seen {}, last seen {}{})",
                "",
                claim.key,
                claim.refusal,
                claim.first_seen,
                claim.last_seen,
                if claim.keys_seen > 1 {
                    format!("; {} different keys", claim.keys_seen)
                } else {
                    String::new()
                }
            )?;
        }
    }
    Ok(())
}

/// `--for DUR` as seconds, with the rules' duration syntax (`90s`, `15m`, `4h`, `7d`).
pub fn parse_for(text: &str) -> Result<u64, String> {
    rules::parse_duration(text).map(|d| d.as_secs()).map_err(|error| format!("{error} ({})", error.hint()))
}

#[cfg(test)]
mod tests {
    use super::encode;

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(encode("web-01.example.com"), "web-01.example.com");
        assert_eq!(encode("ISOLATED FROM NETWORK"), "ISOLATED%20FROM%20NETWORK");
        assert_eq!(encode("a/b?c"), "a%2Fb%3Fc");
    }
}
