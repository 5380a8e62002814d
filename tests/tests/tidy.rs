//! Tidiness of the source tree, checked like behaviour: every Rust file says on its first line
//! (`//!`) what it is for, and every module file of the crates is named in ARCHITECTURE.md's code
//! map, so the map cannot drift from the tree unnoticed.

use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo test")).parent().unwrap().to_path_buf()
}

/// The repository's `.rs` files, without build output, fuzz findings and vendored test data.
fn rust_files(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if path.is_dir() {
            if !name.starts_with('.') && !matches!(name.as_str(), "target" | "artifacts" | "corpus" | "node_modules") {
                rust_files(&path, files);
            }
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
}

fn relative(path: &Path) -> String {
    path.strip_prefix(repo()).unwrap().display().to_string()
}

#[test]
fn every_source_file_starts_with_a_line_on_what_it_is_for() {
    let mut files = Vec::new();
    rust_files(&repo(), &mut files);
    assert!(files.len() > 100, "found only {} files under {}", files.len(), repo().display());
    let without: Vec<String> = files
        .iter()
        .filter(|path| !std::fs::read_to_string(path).unwrap().starts_with("//! "))
        .map(|path| relative(path))
        .collect();
    assert!(without.is_empty(), "these files do not start with a `//! ` line on what they are for: {without:?}");
}

#[test]
fn every_module_file_is_named_in_the_code_map() {
    let map = std::fs::read_to_string(repo().join("ARCHITECTURE.md")).unwrap();
    let mut files = Vec::new();
    for crate_dir in ["rules", "orchestrator", "enforcer", "schemas", "telemetry", "tests", "ebpf/programs", "ebpf/common"] {
        rust_files(&repo().join(crate_dir).join("src"), &mut files);
    }
    let unnamed: Vec<String> = files
        .iter()
        .filter(|path| {
            let name = path.file_name().unwrap().to_str().unwrap();
            // A crate's root and a directory module are named by their crate and directory.
            !matches!(name, "lib.rs" | "main.rs" | "mod.rs") && !map.contains(&format!("`{name}`"))
                && !map.contains(&format!("{name}`")) && !map.contains(&format!("/{name}"))
        })
        .map(|path| relative(path))
        .collect();
    assert!(unnamed.is_empty(), "ARCHITECTURE.md's code map does not name these files: {unnamed:?}");
}
