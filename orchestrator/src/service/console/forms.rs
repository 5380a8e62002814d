//! The console's forms as operators fill them in: each read from the posted fields (unknown ones
//! ignored, missing ones empty), checked with every problem named by its field, and turned into
//! the same requests the API takes. Pure: no I/O, no clock.

use std::collections::BTreeMap;

use crate::api::{check_reason, CheckedIsolation, HostFilter, IsolateRequest, MAX_DURATION_SECONDS};
use crate::service::lifecycle::{AuditEntry, HostState};
use crate::service::lifecycle::check_tag;
use crate::service::profiles::{format_seconds, IsolationPolicy, Profile};

/// The fields of a posted form, in order.
#[derive(Clone, Debug, Default)]
pub struct Fields(pub Vec<(String, String)>);

impl Fields {
    /// The field's value; empty when it is absent.
    pub fn get(&self, name: &str) -> &str {
        self.0.iter().find(|(key, _)| key == name).map_or("", |(_, value)| value.as_str())
    }

    /// A checkbox: ticked when present with a value.
    pub fn ticked(&self, name: &str) -> bool {
        !self.get(name).is_empty()
    }
}

/// Every problem with a form, by the field it is about (`""`: the form as a whole).
pub type Problems = BTreeMap<&'static str, Vec<String>>;

fn add(problems: &mut Problems, field: &'static str, problem: impl Into<String>) {
    problems.entry(field).or_default().push(problem.into());
}

/// A textarea's lines, trimmed, blank ones left out.
pub fn lines(text: &str) -> Vec<String> {
    text.lines().map(str::trim).filter(|line| !line.is_empty()).map(str::to_owned).collect()
}

/// Tags as a field holds them: separated by commas or lines.
pub fn tag_list(text: &str) -> Vec<String> {
    text.split([',', '\n']).map(str::trim).filter(|tag| !tag.is_empty()).map(str::to_owned).collect()
}

/// A duration as operators type it (`90s`, `15m`, `4h`, `7d`, as `--for` takes it), 1 s to a
/// year, in seconds.
fn seconds(text: &str) -> Result<u64, String> {
    let seconds = crate::client::parse_for(text.trim())?;
    if (1..=MAX_DURATION_SECONDS).contains(&seconds) {
        Ok(seconds)
    } else {
        Err(format!("{} is not between 1s and a year", text.trim()))
    }
}

/// A reason as the console requires it: given, and at most the API's limit.
fn required_reason(text: &str, problems: &mut Problems) -> String {
    let reason = text.trim();
    if reason.is_empty() {
        add(problems, "reason", "a reason is required: it goes into the audit trail");
    } else if let Err(problem) = check_reason(Some(reason)) {
        add(problems, "reason", problem);
    }
    reason.to_owned()
}

/// The isolate form.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IsolateForm {
    /// `automatic` or `manual`.
    pub mode: String,
    /// Automatic only: empty means the profile's duration.
    pub duration: String,
    pub reason: String,
    /// One SPEC per line.
    pub exclusions: String,
    /// One process name per line.
    pub processes: String,
    pub allow_dns: bool,
    pub allow_dhcp: bool,
}

impl IsolateForm {
    /// The form as first shown: automatic, for the profile's duration.
    pub fn prefilled(profile: &Profile) -> IsolateForm {
        IsolateForm {
            mode: "automatic".into(),
            duration: format_seconds(profile.automatic_duration_seconds),
            ..IsolateForm::default()
        }
    }

    pub fn read(fields: &Fields) -> IsolateForm {
        IsolateForm {
            mode: fields.get("mode").to_owned(),
            duration: fields.get("duration").to_owned(),
            reason: fields.get("reason").to_owned(),
            exclusions: fields.get("exclusions").to_owned(),
            processes: fields.get("processes").to_owned(),
            allow_dns: fields.ticked("allow_dns"),
            allow_dhcp: fields.ticked("allow_dhcp"),
        }
    }

    /// The isolation it asks for, or every problem, each by its field.
    pub fn check(&self) -> Result<CheckedIsolation, Problems> {
        let mut problems = Problems::new();
        let reason = required_reason(&self.reason, &mut problems);
        let duration_seconds = match self.mode.as_str() {
            "automatic" if self.duration.trim().is_empty() => None,
            "automatic" => seconds(&self.duration).map_err(|problem| add(&mut problems, "duration", problem)).ok(),
            "manual" => None,
            _ => {
                add(&mut problems, "mode", "choose automatic (timed) or manual (until released)");
                None
            }
        };
        let request = IsolateRequest {
            mode: self.mode.clone(),
            duration_seconds,
            exclusions: lines(&self.exclusions),
            allowed_processes: lines(&self.processes),
            allow_dns: self.allow_dns,
            allow_dhcp: self.allow_dhcp,
            reason: Some(reason),
        };
        match request.plan() {
            Ok(isolation) if problems.is_empty() => Ok(isolation),
            Ok(_) => Err(problems),
            Err(found) => {
                for problem in found {
                    add(&mut problems, field_of(&problem), problem);
                }
                Err(problems)
            }
        }
    }
}

/// The field a problem of the API's checks is about.
pub fn field_of(problem: &str) -> &'static str {
    let problem = problem.trim_start_matches("with profile ");
    if problem.contains("exclusion") || problem.contains("overlap") || problem.contains("networks are excluded") {
        "exclusions"
    } else if problem.contains("process") {
        "processes"
    } else if problem.contains("duration") {
        "duration"
    } else if problem.starts_with("reason") {
        "reason"
    } else if problem.starts_with("mode") {
        "mode"
    } else {
        ""
    }
}

/// A form with only a reason (release, deny, approve, sign-out has none).
pub fn reason(fields: &Fields) -> Result<String, Problems> {
    let mut problems = Problems::new();
    let reason = required_reason(fields.get("reason"), &mut problems);
    if problems.is_empty() {
        Ok(reason)
    } else {
        Err(problems)
    }
}

/// The extend form: how much longer, and why.
pub fn extension(fields: &Fields) -> Result<(u64, String), Problems> {
    let mut problems = Problems::new();
    let reason = required_reason(fields.get("reason"), &mut problems);
    let by = seconds(fields.get("by")).map_err(|problem| add(&mut problems, "by", problem)).ok();
    match by {
        Some(by) if problems.is_empty() => Ok((by, reason)),
        _ => Err(problems),
    }
}

/// The tags form: what to add and remove.
pub fn tags(fields: &Fields) -> Result<(Vec<String>, Vec<String>), Problems> {
    let mut problems = Problems::new();
    let (add_tags, remove_tags) = (tag_list(fields.get("add")), tag_list(fields.get("remove")));
    for tag in add_tags.iter().chain(&remove_tags) {
        if let Err(refused) = check_tag(tag) {
            add(&mut problems, "tags", refused.to_string());
        }
    }
    if add_tags.is_empty() && remove_tags.is_empty() {
        add(&mut problems, "tags", "name a tag to add or to remove");
    }
    if problems.is_empty() {
        Ok((add_tags, remove_tags))
    } else {
        Err(problems)
    }
}

/// One profile as the policy page edits it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProfileForm {
    pub name: String,
    pub tags: String,
    pub priority: String,
    pub duration: String,
    pub exclusions: String,
    pub processes: String,
    pub allow_dns: bool,
    pub allow_dhcp: bool,
}

impl ProfileForm {
    pub fn of(profile: &Profile) -> ProfileForm {
        ProfileForm {
            name: profile.name.clone(),
            tags: profile.tags.join(", "),
            priority: profile.priority.to_string(),
            duration: format_seconds(profile.automatic_duration_seconds),
            exclusions: profile.exclusions.join("\n"),
            processes: profile.allowed_processes.join("\n"),
            allow_dns: profile.allow_dns,
            allow_dhcp: profile.allow_dhcp,
        }
    }

    pub fn read(fields: &Fields) -> ProfileForm {
        ProfileForm {
            name: fields.get("name").trim().to_owned(),
            tags: fields.get("tags").to_owned(),
            priority: fields.get("priority").to_owned(),
            duration: fields.get("duration").to_owned(),
            exclusions: fields.get("exclusions").to_owned(),
            processes: fields.get("processes").to_owned(),
            allow_dns: fields.ticked("allow_dns"),
            allow_dhcp: fields.ticked("allow_dhcp"),
        }
    }

    /// The profile, or the problems of its own fields (the policy as a whole is checked by the
    /// service, with the rules in force).
    pub fn profile(&self) -> Result<Profile, Problems> {
        let mut problems = Problems::new();
        let priority = match self.priority.trim() {
            "" => 0,
            text => text
                .parse::<i32>()
                .map_err(|_| add(&mut problems, "priority", format!("priority {text:?} is not a whole number")))
                .unwrap_or(0),
        };
        let duration = seconds(&self.duration).map_err(|problem| add(&mut problems, "duration", problem)).unwrap_or(0);
        if problems.is_empty() {
            Ok(Profile {
                name: self.name.clone(),
                tags: tag_list(&self.tags),
                priority,
                automatic_duration_seconds: duration,
                exclusions: lines(&self.exclusions),
                allowed_processes: lines(&self.processes),
                allow_dns: self.allow_dns,
                allow_dhcp: self.allow_dhcp,
            })
        } else {
            Err(problems)
        }
    }
}

/// The policy with profile `replacing` (by name; none: a new profile) set to `edited`, or left
/// out when `edited` is `None`.
pub fn policy_with(policy: &IsolationPolicy, replacing: Option<&str>, edited: Option<Profile>) -> IsolationPolicy {
    let mut profiles: Vec<Profile> =
        policy.profiles.iter().filter(|profile| Some(profile.name.as_str()) != replacing).cloned().collect();
    if let Some(edited) = edited {
        let at = replacing
            .and_then(|name| policy.profiles.iter().position(|profile| profile.name == name))
            .unwrap_or(profiles.len())
            .min(profiles.len());
        profiles.insert(at, edited);
    }
    IsolationPolicy { profiles }
}

/// The bulk form: which hosts, what to do, and the typed confirmation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BulkForm {
    pub filter: HostFilter,
    /// `isolate`, `isolate-manual` or `release`.
    pub action: String,
    pub reason: String,
    /// What the operator typed; must be [`BulkForm::confirmation`].
    pub typed: String,
    /// How many hosts the preview showed, and which (`api::selection_digest`).
    pub expected: String,
    pub selection: String,
}

impl BulkForm {
    pub fn read(fields: &Fields) -> BulkForm {
        BulkForm {
            filter: HostFilter {
                tag: Some(fields.get("tag").to_owned()).filter(|t| !t.is_empty()),
                state: Some(fields.get("state").to_owned()).filter(|s| !s.is_empty()),
            },
            action: fields.get("action").to_owned(),
            reason: fields.get("reason").to_owned(),
            typed: fields.get("typed").to_owned(),
            expected: fields.get("expected").to_owned(),
            selection: fields.get("selection").to_owned(),
        }
    }

    /// What the operator must type to act on `count` hosts: `isolate 12 hosts`.
    pub fn confirmation(action: &str, count: usize) -> String {
        let verb = if action == "release" { "release" } else { "isolate" };
        format!("{verb} {count} hosts")
    }

    /// The action, the reason and the host count, or every problem.
    pub fn check(&self) -> Result<(crate::service::api::BulkAction, String, usize), Problems> {
        use crate::service::api::BulkAction;
        let mut problems = Problems::new();
        let reason = required_reason(&self.reason, &mut problems);
        let action = match self.action.as_str() {
            "isolate" => Some(BulkAction::Isolate { manual: false }),
            "isolate-manual" => Some(BulkAction::Isolate { manual: true }),
            "release" => Some(BulkAction::Release),
            _ => {
                add(&mut problems, "action", "choose what to do to these hosts");
                None
            }
        };
        let expected = self.expected.parse::<usize>().ok();
        match expected {
            None => add(&mut problems, "", "the form lost its host count: look at the hosts again"),
            Some(0) => add(&mut problems, "", "the filter selects no host"),
            Some(count) if self.typed.trim() != BulkForm::confirmation(&self.action, count) => add(
                &mut problems,
                "typed",
                format!("type exactly \"{}\" to confirm", BulkForm::confirmation(&self.action, count)),
            ),
            Some(_) => {}
        }
        match (action, expected) {
            (Some(action), Some(count)) if problems.is_empty() => Ok((action, reason, count)),
            _ => Err(problems),
        }
    }
}

/// Which audit entries the history page shows: every field optional, all must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryFilter {
    /// The host id, exactly.
    pub host: String,
    /// Part of the operator's name (as `by` records it).
    pub operator: String,
    /// A rule id, exactly.
    pub rule: String,
    /// The state the entry moved to.
    pub state: String,
    /// From, and until: `YYYY-MM-DD` or `YYYY-MM-DDTHH:MM` (UTC), or RFC 3339.
    pub from: String,
    pub to: String,
}

impl HistoryFilter {
    /// The filter's time bounds in epoch ms, or the problems with them.
    pub fn bounds(&self) -> Result<(Option<i64>, Option<i64>), Problems> {
        let mut problems = Problems::new();
        let mut bound = |field: &'static str, text: &str, end: bool| -> Option<i64> {
            let text = text.trim();
            if text.is_empty() {
                return None;
            }
            let parsed = parse_time(text, end);
            if parsed.is_none() {
                add(&mut problems, field, format!("{text:?} is not a time (YYYY-MM-DD, YYYY-MM-DDTHH:MM, UTC)"));
            }
            parsed
        };
        let from = bound("from", &self.from, false);
        let to = bound("to", &self.to, true);
        if !self.state.is_empty() && !HostState::ALL.iter().any(|state| state.name() == self.state) {
            add(&mut problems, "state", format!("{:?} is not a state", self.state));
        }
        if problems.is_empty() {
            Ok((from, to))
        } else {
            Err(problems)
        }
    }

    /// Whether `entry` matches, with the bounds from [`HistoryFilter::bounds`].
    pub fn matches(&self, entry: &AuditEntry, (from, to): (Option<i64>, Option<i64>)) -> bool {
        (self.host.is_empty() || entry.host == self.host)
            && (self.operator.is_empty() || (entry.by.starts_with("operator ") && entry.by.contains(&self.operator)))
            && (self.rule.is_empty()
                || entry.by.strip_prefix("rules ").is_some_and(|ids| ids.split(',').any(|id| id == self.rule)))
            && (self.state.is_empty() || entry.to.name() == self.state)
            && from.is_none_or(|from| entry.at_ms >= from)
            && to.is_none_or(|to| entry.at_ms <= to)
    }

    /// The filter as a query string (for the export links).
    pub fn query(&self) -> String {
        let pairs = [
            ("host", &self.host),
            ("operator", &self.operator),
            ("rule", &self.rule),
            ("state", &self.state),
            ("from", &self.from),
            ("to", &self.to),
        ];
        pairs
            .iter()
            .filter(|(_, value)| !value.is_empty())
            .map(|(key, value)| format!("{key}={}", crate::client::encode(value)))
            .collect::<Vec<_>>()
            .join("&")
    }
}

/// `YYYY-MM-DD`, `YYYY-MM-DDTHH:MM[:SS]` (UTC), or RFC 3339: its start, or with `end` its last
/// millisecond (the whole day, minute or second it names).
fn parse_time(text: &str, end: bool) -> Option<i64> {
    use time::format_description::well_known::Rfc3339;
    use time::macros::format_description;
    let ms = |t: time::OffsetDateTime| i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok();
    if let Ok(t) = time::OffsetDateTime::parse(text, &Rfc3339) {
        return ms(t);
    }
    for (format, span_ms) in [
        (format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]"), 1_000),
        (format_description!("[year]-[month]-[day]T[hour]:[minute]"), 60_000),
    ] {
        if let Ok(t) = time::PrimitiveDateTime::parse(text, format) {
            return ms(t.assume_utc()).map(|start| if end { start + span_ms - 1 } else { start });
        }
    }
    let day = time::Date::parse(text, format_description!("[year]-[month]-[day]")).ok()?;
    let start = ms(day.midnight().assume_utc())?;
    Some(if end { start + 86_400_000 - 1 } else { start })
}

/// One CSV field: quoted when it must be, and a leading `=`, `+`, `-`, `@` (or tab, CR)
/// defused with a `'`, since spreadsheets run such cells as formulas and host ids, reasons and
/// rule ids come from outside.
pub fn csv_field(text: &str) -> String {
    let defused = if text.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{text}") } else { text.to_owned() };
    if defused.contains([',', '"', '\n', '\r']) || defused != defused.trim() {
        format!("\"{}\"", defused.replace('"', "\"\""))
    } else {
        defused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Fields {
        Fields(pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect())
    }

    #[test]
    fn an_isolate_form_names_every_problem_by_its_field() {
        let form = IsolateForm::read(&fields(&[
            ("mode", "automatic"),
            ("duration", "5 years"),
            ("exclusions", "out,tcp,10.0.0.0/8,443\nsideways,tcp,10.0.0.1/32\n\n"),
            ("processes", "a/b"),
        ]));
        let problems = form.check().unwrap_err();
        assert_eq!(problems.keys().copied().collect::<Vec<_>>(), vec!["duration", "exclusions", "processes", "reason"]);
        assert_eq!(problems["exclusions"].len(), 1, "the good SPEC passes: {problems:?}");
    }

    #[test]
    fn an_automatic_isolation_without_a_duration_takes_the_profiles() {
        let form = IsolateForm::read(&fields(&[("mode", "automatic"), ("duration", " "), ("reason", "IR-1")]));
        let isolation = form.check().unwrap();
        assert!(isolation.profile_duration && isolation.plan.duration_seconds.is_none());
        let form = IsolateForm::read(&fields(&[("mode", "automatic"), ("duration", "90m"), ("reason", "IR-1"), ("allow_dns", "on")]));
        let isolation = form.check().unwrap();
        assert_eq!((isolation.plan.duration_seconds, isolation.plan.allow_dns), (Some(5_400), true));
        let manual = IsolateForm::read(&fields(&[("mode", "manual"), ("duration", "90m"), ("reason", "r")])).check().unwrap();
        assert_eq!((manual.plan.duration_seconds, manual.profile_duration), (None, false), "manual ignores the duration");
    }

    #[test]
    fn a_bulk_action_needs_the_exact_typed_confirmation() {
        let form = |typed: &str| {
            BulkForm::read(&fields(&[("action", "isolate"), ("reason", "worm"), ("typed", typed), ("expected", "12"), ("tag", "lab")]))
        };
        assert!(form("isolate 12 hosts").check().is_ok());
        assert_eq!(form("isolate 13 hosts").check().unwrap_err()["typed"], vec!["type exactly \"isolate 12 hosts\" to confirm"]);
        assert!(form("yes").check().is_err());
        assert_eq!(form("isolate 12 hosts").filter, HostFilter { tag: Some("lab".into()), state: None });
    }

    #[test]
    fn history_is_filtered_by_host_operator_rule_state_and_time() {
        let entry = |by: &str, to: HostState, at_ms: i64| AuditEntry {
            at_ms,
            host: "plc-01".into(),
            from: HostState::NotIsolated,
            to,
            by: by.into(),
            event_id: None,
            generation: 1,
            why: "x".into(),
            shadow: false,
        };
        let by_rule = entry("rules ransomware,worm", HostState::Isolating, 1_765_000_000_000);
        let by_alice = entry("operator alice (127.0.0.1:5)", HostState::Releasing, 1_765_100_000_000);
        let filter = |f: HistoryFilter| {
            let bounds = f.bounds().unwrap();
            [&by_rule, &by_alice].iter().filter(|e| f.matches(e, bounds)).count()
        };
        assert_eq!(filter(HistoryFilter::default()), 2);
        assert_eq!(filter(HistoryFilter { rule: "worm".into(), ..Default::default() }), 1);
        assert_eq!(filter(HistoryFilter { rule: "wor".into(), ..Default::default() }), 0, "rule ids match whole");
        assert_eq!(filter(HistoryFilter { operator: "alice".into(), ..Default::default() }), 1);
        assert_eq!(filter(HistoryFilter { state: "releasing".into(), ..Default::default() }), 1);
        assert_eq!(filter(HistoryFilter { host: "plc-0".into(), ..Default::default() }), 0);
        assert_eq!(filter(HistoryFilter { from: "2025-12-07".into(), ..Default::default() }), 1);
        assert_eq!(filter(HistoryFilter { to: "2025-12-06T06:00".into(), ..Default::default() }), 1);
        // "To" a minute is to its end: an entry at 05:46:40 is in "to 05:46".
        assert_eq!(filter(HistoryFilter { to: "2025-12-06T05:46".into(), ..Default::default() }), 1);
        assert_eq!(filter(HistoryFilter { to: "2025-12-06T05:45".into(), ..Default::default() }), 0);
        let bad = HistoryFilter { from: "yesterday".into(), state: "gone".into(), ..Default::default() };
        assert_eq!(bad.bounds().unwrap_err().keys().copied().collect::<Vec<_>>(), vec!["from", "state"]);
    }

    #[test]
    fn csv_fields_are_quoted_and_formulas_defused() {
        assert_eq!(csv_field("web-01"), "web-01");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=HYPERLINK(\"http://x\")"), "\"'=HYPERLINK(\"\"http://x\"\")\"");
        assert_eq!(csv_field("-1+2"), "'-1+2");
        assert_eq!(csv_field("line\nbreak"), "\"line\nbreak\"");
    }

    #[test]
    fn a_profile_form_reads_back_what_it_shows() {
        let profile = Profile {
            name: "plc".into(),
            tags: vec!["plc".into(), "ics".into()],
            priority: 10,
            automatic_duration_seconds: 1_800,
            exclusions: vec!["out,tcp,192.0.2.20/32,502".into()],
            allowed_processes: vec!["historian".into()],
            allow_dns: true,
            allow_dhcp: false,
        };
        let form = ProfileForm::of(&profile);
        assert_eq!(form.profile().unwrap(), profile);
        let bad = ProfileForm { priority: "high".into(), duration: "soon".into(), ..form };
        assert_eq!(bad.profile().unwrap_err().keys().copied().collect::<Vec<_>>(), vec!["duration", "priority"]);
        let policy = IsolationPolicy { profiles: vec![IsolationPolicy::seed().profiles.remove(0), profile.clone()] };
        let renamed = Profile { name: "plc-2".into(), ..profile };
        let edited = policy_with(&policy, Some("plc"), Some(renamed));
        assert_eq!(edited.profiles.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), vec!["default", "plc-2"]);
        assert_eq!(policy_with(&policy, Some("plc"), None).profiles.len(), 1);
    }
}
