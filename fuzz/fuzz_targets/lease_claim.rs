//! Fuzzes `cordon_wire::lease::open_lease`, what every `cordon serve` runs on each message of the
//! lease topic (anyone who can write to Kafka can write there): no input panics it, only a
//! signature by cordon's key opens a claim, and nothing larger than a claim may be is read.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // A fixed key: a random input never carries its signature, so nothing may open.
    let key = cordon_wire::signing_key_from_base64("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").expect("key");
    let opened = cordon_wire::lease::open_lease(data, &key.verifying_key());
    if data.len() > cordon_wire::lease::MAX_LEASE_BYTES {
        assert_eq!(opened, Err(cordon_wire::lease::LeaseRefusal::Oversized));
    }
    // A claim never opens as a command.
    if opened.is_ok() {
        assert!(cordon_wire::open(data, &key.verifying_key()).is_err());
    }
});
