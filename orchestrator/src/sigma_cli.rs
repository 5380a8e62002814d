//! `cordon rules import-sigma`: reads Sigma rule files and a pipeline, hands the texts to the pure
//! importer in `rules`, writes the converted rules into a rules directory and lists the rest.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use rules::{
    builtin_pipeline, builtin_pipeline_names, import_rule, parse_policy, parse_pipeline, parse_rule_file,
    ImportOptions, Level, LevelResponse, NotImported, Pipeline, Policy, SourceFile, IMPORTED_HEADER,
};

/// What `import-sigma` was asked to do.
#[derive(Debug)]
pub struct ImportRequest {
    pub paths: Vec<PathBuf>,
    pub pipeline: String,
    pub out: PathBuf,
    pub levels: Vec<(Level, LevelResponse)>,
    pub live: bool,
}

/// `--level LEVEL=RESPONSE`.
pub fn parse_level_response(text: &str) -> Result<(Level, LevelResponse), String> {
    let (level, response) =
        text.split_once('=').ok_or_else(|| format!("`{text}` is not LEVEL=RESPONSE, e.g. high=automatic:1h"))?;
    let level = Level::from_name(level).ok_or_else(|| {
        format!("`{level}` is not a Sigma level (informational, low, medium, high, critical)")
    })?;
    Ok((level, LevelResponse::parse(response)?))
}

/// Imports every Sigma rule the paths name. Ok(false) when a rule could not be converted (rules
/// skipped for their level are a choice, not a problem).
pub fn import(request: &ImportRequest, out: &mut impl Write) -> anyhow::Result<bool> {
    let pipeline = load_pipeline(&request.pipeline)?;
    let mut sources = Vec::new();
    for path in &request.paths {
        collect_sigma_files(path, &mut sources)?;
    }
    if sources.is_empty() {
        bail!("no Sigma rule files (*.yml, *.yaml) in {}", display_paths(&request.paths));
    }
    fs::create_dir_all(&request.out)
        .with_context(|| format!("cannot create the rules directory {}", request.out.display()))?;
    let (rule_files, policy_file) = crate::rules_cli::read_directory(&request.out)?;
    let policy = read_policy(policy_file.as_ref())?;
    let mut taken = existing_rule_ids(&rule_files);
    let mut options = ImportOptions { live: request.live, ..ImportOptions::default() };
    options.responses.extend(request.levels.iter().copied());
    options.command = command_line(request);

    let (mut converted, mut by_level, mut unconvertible) = (0, 0, 0);
    for source in &sources {
        let text = match fs::read_to_string(source) {
            Ok(text) => text,
            Err(error) => {
                writeln!(out, "skipped {}: cannot read it as UTF-8 text: {error}", source.display())?;
                unconvertible += 1;
                continue;
            }
        };
        let name = source.file_name().and_then(|name| name.to_str()).unwrap_or_default();
        let imported = match import_rule(name, &text, &pipeline, &options, &policy) {
            Ok(imported) => imported,
            Err(not_imported) => {
                writeln!(out, "skipped {}: {not_imported}", source.display())?;
                match not_imported {
                    NotImported::Level(_) => by_level += 1,
                    NotImported::Unconvertible(_) => unconvertible += 1,
                }
                continue;
            }
        };
        let target = request.out.join(format!("{}.yaml", imported.id));
        if let Some(owner) = taken.get(&imported.id).filter(|owner| **owner != target) {
            writeln!(out, "skipped {}: rule id {} is taken by {}", source.display(), imported.id, owner.display())?;
            unconvertible += 1;
            continue;
        }
        if let Some(reason) = refuses_overwrite(&target) {
            writeln!(out, "skipped {}: {reason}", source.display())?;
            unconvertible += 1;
            continue;
        }
        write_atomically(&target, &imported.text)?;
        taken.insert(imported.id.clone(), target.clone());
        let mode = if request.live { "live" } else { "shadow" };
        writeln!(
            out,
            "converted {} -> {} (level {}: {}, {mode})",
            source.display(),
            target.display(),
            imported.level.name(),
            imported.response
        )?;
        converted += 1;
    }
    writeln!(
        out,
        "{converted} converted into {}, {unconvertible} could not be converted, {by_level} skipped for their level",
        request.out.display()
    )?;
    Ok(unconvertible == 0)
}

fn load_pipeline(name_or_file: &str) -> anyhow::Result<Pipeline> {
    let (file, text) = if let Some((file, text)) = builtin_pipeline(name_or_file) {
        (file.to_owned(), text.to_owned())
    } else {
        let path = Path::new(name_or_file);
        if !path.exists() {
            let names: Vec<&str> = builtin_pipeline_names().collect();
            bail!("no pipeline named `{name_or_file}` (cordon ships {}) and no such file", names.join(", "));
        }
        let text = fs::read_to_string(path)
            .with_context(|| format!("cannot read the pipeline {} as UTF-8 text", path.display()))?;
        (path.display().to_string(), text)
    };
    parse_pipeline(&file, &text).map_err(|diagnostics| {
        let lines: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
        anyhow::anyhow!("the pipeline has problems:\n{}", lines.join("\n"))
    })
}

/// A file as given, or a directory's *.yml/*.yaml files at any depth, in name order.
fn collect_sigma_files(path: &Path, files: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let metadata = fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if !metadata.is_dir() {
        files.push(path.to_owned());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = fs::read_dir(path)
        .with_context(|| format!("cannot list {}", path.display()))?
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<Result<_, _>>()
        .with_context(|| format!("cannot list {}", path.display()))?;
    entries.sort();
    for entry in entries {
        if entry.is_dir() {
            collect_sigma_files(&entry, files)?;
        } else if entry.extension().is_some_and(|ext| ext == "yml" || ext == "yaml") {
            files.push(entry);
        }
    }
    Ok(())
}

/// The output directory's policy, which converted rules are checked against (placeholders,
/// keyword fields, protection).
fn read_policy(policy: Option<&SourceFile>) -> anyhow::Result<Policy> {
    let Some(policy) = policy else { return Ok(Policy::default()) };
    parse_policy(&policy.name, &policy.text).map_err(|diagnostics| {
        let lines: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
        anyhow::anyhow!("{} has problems; fix it before importing:\n{}", policy.name, lines.join("\n"))
    })
}

/// The ids of the rules already in the directory, with their files.
fn existing_rule_ids(rule_files: &[SourceFile]) -> BTreeMap<String, PathBuf> {
    let mut ids = BTreeMap::new();
    for file in rule_files {
        if let Ok(parsed) = parse_rule_file(&file.name, &file.text) {
            for rule in parsed.rules {
                ids.insert(rule.id().to_owned(), PathBuf::from(&file.name));
            }
        }
    }
    ids
}

/// Why the import must not write `target`: it exists and the import did not write it.
fn refuses_overwrite(target: &Path) -> Option<String> {
    let written_by_import = fs::read_to_string(target).is_ok_and(|text| text.starts_with(IMPORTED_HEADER));
    (target.exists() && !written_by_import).then(|| {
        format!(
            "{} exists and was not written by the import (its first line is not the import's header); \
             move it away to import this rule",
            target.display()
        )
    })
}

fn write_atomically(target: &Path, text: &str) -> anyhow::Result<()> {
    let temporary = target.with_extension("yaml.importing");
    fs::write(&temporary, text).with_context(|| format!("cannot write {}", temporary.display()))?;
    fs::rename(&temporary, target).with_context(|| format!("cannot write {}", target.display()))
}

/// How the import was run, for the rules' headers: paths as given, the options that change the
/// output.
fn command_line(request: &ImportRequest) -> String {
    let mut line = format!("cordon rules import-sigma --pipeline {}", request.pipeline);
    for (level, response) in &request.levels {
        let _ = write!(line, " --level {}={}", level.name(), response.argument());
    }
    if request.live {
        line.push_str(" --live");
    }
    line
}

fn display_paths(paths: &[PathBuf]) -> String {
    paths.iter().map(|path| path.display().to_string()).collect::<Vec<_>>().join(", ")
}
