//! The central isolation policy: named isolation profiles (how long an automatic isolation lasts,
//! what stays open), one `default` and others chosen by host tag, the highest priority winning;
//! kept in versions, each with its author, reason and time. Pure: no I/O and no clock.
//!
//! Every isolation is its profile plus what its rule or operator asked for: exclusions and
//! excluded processes add up, DNS and DHCP are open if either opens them. Profiles are chosen by
//! the tags operators set, never by what an agent reports (whoever holds a host could otherwise
//! report its way into a wider profile).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::lifecycle::IsolationPlan;

/// The profile of every host no other profile selects.
pub const DEFAULT_PROFILE: &str = "default";

/// How long an automatic isolation lasts when no policy says otherwise: 5 hours, the default of
/// Kaspersky Endpoint Security for Linux (an automatic isolation turns itself off 5 h after it
/// starts), which SOC teams coming from it expect.
pub const SEED_AUTOMATIC_DURATION_SECONDS: u64 = 5 * 3_600;

/// The most profiles a policy may hold.
pub const MAX_PROFILES: usize = 100;

/// The most tags one profile may select hosts by.
pub const MAX_PROFILE_TAGS: usize = 64;

/// One named set of isolation settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// 1 to 64 of `A-Z a-z 0-9 . _ -`; `default` is the profile of every other host.
    pub name: String,
    /// Hosts an operator tagged with any of these get this profile (none for `default`).
    #[serde(default)]
    pub tags: Vec<String>,
    /// When a host's tags select several profiles, the highest priority wins; no two profiles
    /// share one (`default`'s is 0 and never compared).
    #[serde(default)]
    pub priority: i32,
    /// How long an automatic isolation lasts when its operator gives no duration.
    pub automatic_duration_seconds: u64,
    /// What stays open: `DIR,PROTO,CIDR[,PORTS]` SPECs.
    #[serde(default)]
    pub exclusions: Vec<String>,
    /// Processes (by name) whose traffic is left alone.
    #[serde(default)]
    pub allowed_processes: Vec<String>,
    #[serde(default)]
    pub allow_dns: bool,
    #[serde(default)]
    pub allow_dhcp: bool,
}

/// Every profile; exactly one is `default`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IsolationPolicy {
    pub profiles: Vec<Profile>,
}

/// One version of the policy as it was stored: the policy and who made it, when and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyVersion {
    /// 1 for the first, one more for each change.
    pub version: u64,
    pub at_ms: i64,
    /// `operator NAME (ADDRESS)`, or `cordon` for the seed.
    pub author: String,
    pub reason: String,
    /// Set when this version restored an earlier one.
    #[serde(default)]
    pub reverted_from: Option<u64>,
    pub policy: IsolationPolicy,
}

/// The profile chosen for a host, and the policy version it came from.
#[derive(Clone, Copy, Debug)]
pub struct ProfileInForce<'a> {
    pub version: u64,
    pub profile: &'a Profile,
}

/// The profile behind a host's isolation, as its record keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileRef {
    pub name: String,
    pub version: u64,
}

impl ProfileInForce<'_> {
    pub fn reference(&self) -> ProfileRef {
        ProfileRef { name: self.profile.name.clone(), version: self.version }
    }

    /// The plan an operator's isolation asks for: its own, lasting this profile's automatic
    /// duration when it gives none.
    pub fn plan_of(&self, isolation: &crate::api::CheckedIsolation) -> IsolationPlan {
        let mut plan = isolation.plan.clone();
        if isolation.profile_duration {
            plan.duration_seconds = Some(self.profile.automatic_duration_seconds);
        }
        plan
    }

    /// What keeps `requested` with this profile under it from any agent's kernel tables.
    pub fn problems_with(&self, requested: &IsolationPlan) -> Vec<String> {
        let plan = self.profile.under(requested);
        let (exclusions, mut problems) = crate::api::check_exclusions(&plan.exclusions, &plan.allowed_processes);
        problems.extend(cordon_wire::rule_table::check_fits(&exclusions, plan.allow_dhcp));
        problems
            .into_iter()
            .map(|problem| format!("with profile {} (policy version {}): {problem}", self.profile.name, self.version))
            .collect()
    }
}

impl PolicyVersion {
    /// The profile for a host with these operator tags, in this version.
    pub fn profile_in_force(&self, operator_tags: &[String]) -> ProfileInForce<'_> {
        ProfileInForce { version: self.version, profile: self.policy.profile_for(operator_tags) }
    }
}

impl IsolationPolicy {
    /// The policy before anyone configured one: a `default` profile whose automatic isolations
    /// last [`SEED_AUTOMATIC_DURATION_SECONDS`] and that leaves nothing open.
    pub fn seed() -> IsolationPolicy {
        IsolationPolicy {
            profiles: vec![Profile {
                name: DEFAULT_PROFILE.to_owned(),
                tags: Vec::new(),
                priority: 0,
                automatic_duration_seconds: SEED_AUTOMATIC_DURATION_SECONDS,
                exclusions: Vec::new(),
                allowed_processes: Vec::new(),
                allow_dns: false,
                allow_dhcp: false,
            }],
        }
    }

    /// The profile for a host with these operator tags: of the profiles any tag selects, the one
    /// with the highest priority; otherwise `default`.
    pub fn profile_for(&self, operator_tags: &[String]) -> &Profile {
        self.profiles
            .iter()
            .filter(|profile| profile.name != DEFAULT_PROFILE)
            .filter(|profile| profile.tags.iter().any(|tag| operator_tags.contains(tag)))
            .max_by_key(|profile| profile.priority)
            .or_else(|| self.profile(DEFAULT_PROFILE))
            .unwrap_or_else(|| &SEEDED_DEFAULT)
    }

    pub fn profile(&self, name: &str) -> Option<&Profile> {
        self.profiles.iter().find(|profile| profile.name == name)
    }

    /// Every problem with the policy, each naming its profile, or nothing. `rules`: each rule
    /// in force and what its isolation leaves open; a profile and a rule are enforced together,
    /// so each pair must fit an agent's kernel tables.
    pub fn problems<'r>(&self, rules: impl IntoIterator<Item = (&'r str, &'r rules::Exclusions)>) -> Vec<String> {
        let mut problems = Vec::new();
        if self.profiles.len() > MAX_PROFILES {
            problems.push(format!("{} profiles; the limit is {MAX_PROFILES}", self.profiles.len()));
        }
        match self.profiles.iter().filter(|p| p.name == DEFAULT_PROFILE).count() {
            0 => problems.push(format!(
                "there is no profile named {DEFAULT_PROFILE:?}: it is the profile of every host no other profile \
                 selects"
            )),
            1 => {}
            n => problems.push(format!("{n} profiles are named {DEFAULT_PROFILE:?}; names must be unique")),
        }
        let mut names = BTreeSet::new();
        let mut priorities: std::collections::BTreeMap<i32, &str> = std::collections::BTreeMap::new();
        let mut parsed: Vec<(&Profile, Vec<cordon_wire::Exclusion>)> = Vec::new();
        for profile in self.profiles.iter().take(MAX_PROFILES) {
            let name = &profile.name;
            let valid_name = !name.is_empty()
                && name.len() <= 64
                && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !valid_name {
                let shown: String = name.chars().take(64).collect();
                problems.push(format!(
                    "profile name {shown:?} must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' and '-'"
                ));
            } else if name != DEFAULT_PROFILE && !names.insert(name.as_str()) {
                problems.push(format!("profile {name}: the name is used twice"));
            }
            let mut in_profile = |problem: String| problems.push(format!("profile {name}: {problem}"));
            if name == DEFAULT_PROFILE {
                if !profile.tags.is_empty() {
                    in_profile("the default profile selects no hosts by tag (it has every host no other profile \
                                selects); remove its tags"
                        .to_owned());
                }
                if profile.priority != 0 {
                    in_profile("the default profile's priority is never compared; leave it 0".to_owned());
                }
            } else {
                if profile.tags.is_empty() {
                    in_profile("selects no host: give it the tags of the hosts it is for".to_owned());
                }
                if let Some(other) = priorities.insert(profile.priority, name) {
                    in_profile(format!(
                        "priority {} is also profile {other}'s: a host tagged for both would have no clear profile; \
                         give each its own",
                        profile.priority
                    ));
                }
            }
            if profile.tags.len() > MAX_PROFILE_TAGS {
                in_profile(format!("{} tags; the limit is {MAX_PROFILE_TAGS}", profile.tags.len()));
            }
            for tag in profile.tags.iter().take(MAX_PROFILE_TAGS) {
                if let Err(refused) = super::lifecycle::check_tag(tag) {
                    in_profile(refused.to_string());
                }
            }
            match profile.automatic_duration_seconds {
                0 => in_profile("automatic_duration_seconds must be at least 1".to_owned()),
                seconds if seconds > crate::api::MAX_DURATION_SECONDS => in_profile(format!(
                    "automatic_duration_seconds {seconds} is longer than a year ({})",
                    crate::api::MAX_DURATION_SECONDS
                )),
                _ => {}
            }
            let (exclusions, found) = crate::api::check_exclusions(&profile.exclusions, &profile.allowed_processes);
            found.into_iter().for_each(&mut in_profile);
            for problem in cordon_wire::rule_table::check_fits(&exclusions, profile.allow_dhcp) {
                in_profile(problem);
            }
            parsed.push((profile, exclusions));
        }
        for (id, allowed) in rules {
            for (profile, exclusions) in &parsed {
                if allowed.allow.is_empty() && !allowed.allow_dhcp {
                    continue;
                }
                let together: Vec<cordon_wire::Exclusion> = exclusions.iter().chain(&allowed.allow).copied().collect();
                let fits = cordon_wire::rule_table::check_fits(&together, profile.allow_dhcp || allowed.allow_dhcp);
                for problem in fits {
                    problems.push(format!("profile {} with rule {id}: {problem}", profile.name));
                }
            }
        }
        problems
    }

    /// What changed from `self` to `after`, profile by profile, setting by setting.
    pub fn diff(&self, after: &IsolationPolicy) -> Vec<Change> {
        let mut changes = Vec::new();
        for before in &self.profiles {
            if after.profile(&before.name).is_none() {
                changes.push(Change::whole(&before.name, ChangeKind::Removed));
            }
        }
        for now in &after.profiles {
            let Some(before) = self.profile(&now.name) else {
                changes.push(Change::whole(&now.name, ChangeKind::Added));
                continue;
            };
            let mut setting = |name: &str, from: String, to: String| {
                if from != to {
                    changes.push(Change {
                        profile: now.name.clone(),
                        kind: ChangeKind::Changed,
                        setting: Some(name.to_owned()),
                        before: Some(from),
                        after: Some(to),
                    });
                }
            };
            setting("priority", before.priority.to_string(), now.priority.to_string());
            setting(
                "automatic_duration",
                format_seconds(before.automatic_duration_seconds),
                format_seconds(now.automatic_duration_seconds),
            );
            setting("allow_dns", before.allow_dns.to_string(), now.allow_dns.to_string());
            setting("allow_dhcp", before.allow_dhcp.to_string(), now.allow_dhcp.to_string());
            for (name, from, to) in [
                ("tags", &before.tags, &now.tags),
                ("exclusions", &before.exclusions, &now.exclusions),
                ("allowed_processes", &before.allowed_processes, &now.allowed_processes),
            ] {
                for gone in from.iter().filter(|item| !to.contains(item)) {
                    changes.push(Change::item(&now.name, name, ChangeKind::Removed, gone));
                }
                for new in to.iter().filter(|item| !from.contains(item)) {
                    changes.push(Change::item(&now.name, name, ChangeKind::Added, new));
                }
            }
        }
        changes
    }
}

/// What each version changed from the one before it (everything, for the first).
pub fn changes_by_version(versions: &[PolicyVersion]) -> Vec<Vec<Change>> {
    let empty = IsolationPolicy { profiles: Vec::new() };
    let mut before = &empty;
    versions
        .iter()
        .map(|version| {
            let changes = before.diff(&version.policy);
            before = &version.policy;
            changes
        })
        .collect()
}

/// The default profile when a policy has none (a policy that validated always has one).
static SEEDED_DEFAULT: std::sync::LazyLock<Profile> = std::sync::LazyLock::new(|| {
    IsolationPolicy::seed().profiles.pop().expect("the seed has its default profile")
});

/// `5h`, `90m`, `45s`, `2d`: the largest unit that divides the duration.
pub fn format_seconds(seconds: u64) -> String {
    rules::format_duration(std::time::Duration::from_secs(seconds))
}

/// One difference between two versions of the policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub profile: String,
    pub kind: ChangeKind,
    /// The setting that changed; none when the whole profile was added or removed.
    pub setting: Option<String>,
    /// The value before (a changed setting) or the item removed (from a list setting).
    pub before: Option<String>,
    /// The value after, or the item added.
    pub after: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Added,
    Removed,
    Changed,
}

impl Change {
    fn whole(profile: &str, kind: ChangeKind) -> Change {
        Change { profile: profile.to_owned(), kind, setting: None, before: None, after: None }
    }

    fn item(profile: &str, setting: &str, kind: ChangeKind, item: &str) -> Change {
        let (before, after) = match kind {
            ChangeKind::Removed => (Some(item.to_owned()), None),
            _ => (None, Some(item.to_owned())),
        };
        Change { profile: profile.to_owned(), kind, setting: Some(setting.to_owned()), before, after }
    }
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let profile = &self.profile;
        match (&self.setting, self.kind) {
            (None, ChangeKind::Added) => write!(f, "+ profile {profile}"),
            (None, _) => write!(f, "- profile {profile}"),
            (Some(setting), ChangeKind::Changed) => write!(
                f,
                "~ profile {profile}: {setting} {} -> {}",
                self.before.as_deref().unwrap_or(""),
                self.after.as_deref().unwrap_or("")
            ),
            (Some(setting), ChangeKind::Added) => {
                write!(f, "+ profile {profile}: {setting} {}", self.after.as_deref().unwrap_or(""))
            }
            (Some(setting), ChangeKind::Removed) => {
                write!(f, "- profile {profile}: {setting} {}", self.before.as_deref().unwrap_or(""))
            }
        }
    }
}

impl Profile {
    /// The isolation `requested` (by a rule or an operator) with this profile under it: the
    /// exclusions and processes of both (the profile's first, none twice), DNS and DHCP open if
    /// either opens them, the requested duration.
    pub fn under(&self, requested: &IsolationPlan) -> IsolationPlan {
        let union = |mine: &[String], theirs: &[String]| -> Vec<String> {
            let mut all: Vec<String> = Vec::with_capacity(mine.len() + theirs.len());
            for item in mine.iter().chain(theirs) {
                if !all.contains(item) {
                    all.push(item.clone());
                }
            }
            all
        };
        IsolationPlan {
            duration_seconds: requested.duration_seconds,
            exclusions: union(&self.exclusions, &requested.exclusions),
            allowed_processes: union(&self.allowed_processes, &requested.allowed_processes),
            allow_dns: self.allow_dns || requested.allow_dns,
            allow_dhcp: self.allow_dhcp || requested.allow_dhcp,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(name: &str, tags: &[&str], priority: i32) -> Profile {
        Profile {
            name: name.to_owned(),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            priority,
            automatic_duration_seconds: 3_600,
            exclusions: Vec::new(),
            allowed_processes: Vec::new(),
            allow_dns: false,
            allow_dhcp: false,
        }
    }

    fn tags(names: &[&str]) -> Vec<String> {
        names.iter().map(|t| (*t).to_owned()).collect()
    }

    #[test]
    fn the_highest_priority_profile_a_tag_selects_wins_and_default_has_the_rest() {
        let policy = IsolationPolicy {
            profiles: vec![profile("default", &[], 0), profile("plc", &["plc", "ics"], 10), profile("ics", &["ics"], 5)],
        };
        assert_eq!(policy.profile_for(&tags(&["ics"])).name, "plc");
        assert_eq!(policy.profile_for(&tags(&["web", "plc"])).name, "plc");
        assert_eq!(policy.profile_for(&tags(&["web"])).name, "default");
        assert_eq!(policy.profile_for(&[]).name, "default");
        assert_eq!(IsolationPolicy { profiles: Vec::new() }.profile_for(&[]).automatic_duration_seconds, 5 * 3_600);
    }

    #[test]
    fn the_seed_is_valid_and_lasts_five_hours() {
        let seed = IsolationPolicy::seed();
        assert!(seed.problems([]).is_empty());
        assert_eq!(seed.profile_for(&[]).automatic_duration_seconds, 18_000);
    }

    #[test]
    fn every_problem_is_reported_at_once_each_naming_its_profile() {
        let mut bad = profile("plc", &[], 3);
        bad.automatic_duration_seconds = 0;
        bad.exclusions = vec!["out,tcp,10.0.0.0/33,443".into(), "sideways,tcp,10.0.0.1/32".into()];
        bad.allowed_processes = vec!["a/b".into()];
        let mut twin = profile("ics", &["ics", crate::service::lifecycle::ISOLATED_TAG], 3);
        twin.exclusions = (1..=13).map(|port| format!("out,tcp,10.0.0.0/8,{port}")).collect();
        let policy = IsolationPolicy { profiles: vec![bad, twin, profile("no good", &["x"], 4)] };
        let problems = policy.problems([]);
        let expected = [
            "there is no profile named \"default\"",
            "profile plc: selects no host",
            "profile plc: automatic_duration_seconds must be at least 1",
            "profile plc: exclusion \"out,tcp,10.0.0.0/33,443\"",
            "profile plc: exclusion \"sideways,tcp,10.0.0.1/32\"",
            "profile plc: process name \"a/b\"",
            "profile ics: priority 3 is also profile plc's",
            "profile ics: the tag \"ISOLATED FROM NETWORK\" is managed by cordon",
            "profile ics: 13 different exclusions apply to 10.0.0.0/8; at most 12",
            "profile name \"no good\" must be",
        ];
        for wanted in expected {
            assert!(problems.iter().any(|p| p.starts_with(wanted)), "no problem starts with {wanted:?}: {problems:#?}");
        }
        assert_eq!(problems.len(), expected.len(), "{problems:#?}");
    }

    #[test]
    fn a_profile_and_a_rule_must_fit_the_kernel_together() {
        let mut wide = profile("default", &[], 0);
        wide.exclusions = (1..=8).map(|port| format!("out,tcp,10.0.0.0/8,{port}")).collect();
        let policy = IsolationPolicy { profiles: vec![wide] };
        let rule = rules::Exclusions {
            allow: (20..=25).map(|port| format!("out,tcp,10.1.0.0/16,{port}").parse().unwrap()).collect(),
            ..rules::Exclusions::default()
        };
        assert_eq!(
            policy.problems([("r-1", &rule)]),
            vec![
                "profile default with rule r-1: 14 different exclusions apply to 10.1.0.0/16; at most 12 may overlap \
                 one network (the kernel holds 16, 4 of them kept for the agent's own channel)"
            ]
        );
    }

    #[test]
    fn an_isolation_is_its_profile_plus_what_was_asked() {
        let mut plc = profile("plc", &["plc"], 1);
        plc.exclusions = vec!["out,tcp,10.0.0.5/32,502".into()];
        plc.allowed_processes = vec!["historian".into()];
        plc.allow_dns = true;
        let asked = IsolationPlan {
            duration_seconds: Some(60),
            exclusions: vec!["out,tcp,10.0.0.5/32,502".into(), "in,tcp,0.0.0.0/0,22".into()],
            allowed_processes: Vec::new(),
            allow_dns: false,
            allow_dhcp: true,
        };
        let plan = plc.under(&asked);
        assert_eq!(plan.exclusions, vec!["out,tcp,10.0.0.5/32,502", "in,tcp,0.0.0.0/0,22"]);
        assert_eq!(plan.allowed_processes, vec!["historian"]);
        assert!(plan.allow_dns && plan.allow_dhcp);
        assert_eq!(plan.duration_seconds, Some(60));
    }

    #[test]
    fn a_diff_names_each_profile_and_setting_that_changed() {
        let before = IsolationPolicy { profiles: vec![profile("default", &[], 0), profile("old", &["x"], 1)] };
        let mut default = profile("default", &[], 0);
        default.automatic_duration_seconds = 4 * 3_600;
        default.exclusions = vec!["out,udp,10.0.0.53/32,53".into()];
        let after = IsolationPolicy { profiles: vec![default, profile("plc", &["plc"], 2)] };
        let lines: Vec<String> = before.diff(&after).iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            vec![
                "- profile old",
                "~ profile default: automatic_duration 1h -> 4h",
                "+ profile default: exclusions out,udp,10.0.0.53/32,53",
                "+ profile plc",
            ]
        );
        assert!(after.diff(&after).is_empty());
    }
}
