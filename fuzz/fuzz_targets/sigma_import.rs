//! Fuzzes `cordon rules import-sigma`: no Sigma rule or pipeline text panics the importer, and
//! whatever it converts is one shadow rule with the id it reports (no text in a Sigma rule can
//! write fields of its own into the cordon rule).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = rules::parse_pipeline("fuzz.yml", text);
    let (file, pipeline) = rules::builtin_pipeline("ocsf-linux").expect("ships ocsf-linux");
    let pipeline = rules::parse_pipeline(file, pipeline).expect("the shipped pipeline is valid");
    let mut options = rules::ImportOptions::default();
    options.responses.extend(rules::Level::ALL.map(|level| (level, rules::LevelResponse::Approval)));
    let Ok(imported) = rules::import_rule("fuzz.yml", text, &pipeline, &options, &rules::Policy::default()) else {
        return;
    };
    let parsed = rules::parse_rule_file("converted.yaml", &imported.text).expect("the importer checks that it loads");
    assert_eq!(parsed.rules.len(), 1);
    assert_eq!(parsed.rules[0].id(), imported.id);
    assert!(parsed.rules[0].shadow(), "imported rules are shadow rules unless --live");
});
