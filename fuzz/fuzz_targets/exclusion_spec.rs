//! Fuzzes the exclusion SPEC grammar (`DIR,PROTO,CIDR[,PORTS]`) shared by rules, the API and the
//! agent: no input panics, and what parses prints back to a SPEC that parses to the same.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(spec) = rules::parse_allow_spec(text) {
        let printed = spec.to_string();
        let again = rules::parse_allow_spec(&printed).expect("a printed SPEC parses");
        assert_eq!(spec, again, "{text:?} printed as {printed:?}");
    }
});
