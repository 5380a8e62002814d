//! Helpers shared by the data-driven tests: reading a rules directory the way `cordon` does.

use std::fs;
use std::path::Path;

use rules::SourceFile;

/// The rule files (sorted) and the policy of `dir`, named `PREFIX/FILE` in diagnostics.
pub fn read_rules_dir(dir: &Path, prefix: &str) -> (Vec<SourceFile>, Option<SourceFile>) {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", dir.display()))
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| Path::new(name).extension().is_some_and(|ext| ext == "yaml" || ext == "yml"))
        .collect();
    names.sort();
    let mut rule_files = Vec::new();
    let mut policy = None;
    for name in names {
        let text = fs::read_to_string(dir.join(&name)).unwrap();
        let file = SourceFile { name: format!("{prefix}/{name}"), text };
        if name == "policy.yaml" {
            policy = Some(file);
        } else {
            rule_files.push(file);
        }
    }
    (rule_files, policy)
}

/// The subdirectories of `dir`, sorted.
pub fn subdirectories(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut dirs: Vec<_> =
        fs::read_dir(dir).unwrap().map(|entry| entry.unwrap().path()).filter(|path| path.is_dir()).collect();
    dirs.sort();
    dirs
}
