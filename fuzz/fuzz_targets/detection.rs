//! Fuzzes detection parsing in every alert format (OCSF, ECS, Falco, Wazuh), whole and through a
//! rule set's projection, and evaluation: no input panics, both parses agree on validity, and
//! both decide the same.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn ruleset() -> &'static rules::Ruleset {
    static RULES: OnceLock<rules::Ruleset> = OnceLock::new();
    RULES.get_or_init(|| {
        // A keyword search of every text too: the projected parse then captures the texts itself,
        // and must capture what the whole parse's tree holds (repeated keys included).
        let text = "id: fuzz\ntitle: Fuzz\ndetection:\n  selection:\n    severity_id|gte: 4\n    \
                    process.name|contains: [crypt, ransom]\n  other:\n    device.os.name: Linux\n  \
                    words:\n    '|contains': [mimikatz, lsass]\n  \
                    condition: selection or other or words\nresponse:\n  isolate:\n    mode: automatic\n    \
                    duration: 1h\n";
        let files = [rules::SourceFile { name: "fuzz.yaml".into(), text: text.into() }];
        rules::RuleDirectory::load(&files, None).expect("the fuzz rule validates").ruleset().clone()
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for format in rules::Format::ALL {
        let whole = rules::Event::parse_as(text, format);
        let projected = rules::Event::parse_projected_as(text, ruleset().projection(), format);
        assert_eq!(whole.is_ok(), projected.is_ok(), "{format}: whole: {whole:?}, projected: {projected:?}");
        if let (Ok(whole), false) = (&whole, format.has_dotted_keys()) {
            // The event's own tree reads like serde_json's (repeated keys, numbers, escapes).
            let value: serde_json::Value = serde_json::from_str(text).expect("a parsed event is JSON");
            assert_eq!(whole.fields().root().to_value(), value, "{format}");
        }
        if let (Ok(whole), Ok(projected)) = (whole, projected) {
            assert!(!whole.host().is_empty() && !whole.id().is_empty() && whole.severity_id() <= 6, "{format}: {whole:?}");
            let none: [&str; 0] = [];
            let mut state = rules::EngineState::default();
            let decided = rules::evaluate(ruleset(), &mut state, &whole, None, 1_700_000_000_000, &none);
            let mut state = rules::EngineState::default();
            let decided_projected = rules::evaluate(ruleset(), &mut state, &projected, None, 1_700_000_000_000, &none);
            assert_eq!(decided, decided_projected, "{format}");
        }
    }
});
