//! Fuzzes rule files and `policy.yaml`: no text panics the parsers or the compiler; every problem
//! comes back as diagnostics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = rules::parse_policy("policy.yaml", text);
    let files = [rules::SourceFile { name: "fuzz.yaml".into(), text: text.into() }];
    let _ = rules::RuleDirectory::load(&files, None);
});
