//! The response-rule language and its engine: compiles SOC-authored rules and decides, for each detection event, whether and how to isolate a host. Pure: no I/O, time is an argument.
//!
//! The flow: [`parse_rule_file`] and [`parse_policy`] validate texts (the caller reads the files),
//! [`Ruleset::compile`] builds the indexed rule set, and [`evaluate`] decides for each [`Event`],
//! updating an [`EngineState`] the caller persists. [`RuleDirectory`] does the first steps for a
//! whole directory and runs the rules' `tests:`.

mod condition;
mod config;
mod decision;
mod diagnostic;
mod duration;
mod engine;
mod event;
mod fields;
mod format;
mod matcher;
mod ruleset;
mod sigma_import;
mod sigma_string;
mod state;
mod tags;
mod testing;
mod yaml;

pub use config::{
    parse_policy, parse_rule_file, parse_rule_file_with, Ceiling, Policy, ResponseMode, Retrigger, Rule, RuleFile, TestCase,
    DEFAULT_ESCALATION_WINDOW,
};
pub use decision::{Action, Decision, Exclusions, Isolation, IsolationMode, Reason, ReasonKind};
pub use diagnostic::{Diagnostic, Position};
pub use duration::{format_duration, parse_duration, DurationError, MAX_DURATION};
pub use engine::{dry_run, dry_run_rule, evaluate, screen, DryRun, RuleVerdict, Screened};
pub use event::{Event, EventError, Projection};
pub use fields::{Field, Fields, Members};
pub use format::{expand_dotted_keys, Format};
pub use ruleset::Ruleset;
pub use sigma_import::{
    builtin_pipeline, builtin_pipeline_names, import_rule, parse_pipeline, ImportOptions, Imported, Level, LevelResponse, NotImported,
    Logsource, Pipeline, IMPORTED_HEADER,
};
pub use tags::TagSources;
pub use state::{EngineState, HostIsolation, HostIsolations, DEDUP_CAPACITY, MAX_KEPT_ISOLATIONS, MAX_THRESHOLD_GROUPS};
pub use testing::{describe_decision, run_test, RuleDirectory, SourceFile, TestOutcome, TestResult};

/// An exclusion SPEC of `allow:`, `DIR,PROTO,CIDR[,PORTS]`: the grammar the enforcer's `--allow`
/// and the commands use too, defined once in [`cordon_wire::spec`].
pub use cordon_wire::spec::{Exclusion as AllowSpec, SpecError as AllowSpecError};

/// Parses an exclusion SPEC (the same as `text.parse::<AllowSpec>()`).
pub fn parse_allow_spec(text: &str) -> Result<AllowSpec, AllowSpecError> {
    text.parse()
}
