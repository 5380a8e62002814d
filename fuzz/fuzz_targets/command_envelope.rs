//! Fuzzes `cordon_wire::open`, what an agent runs on every message of the commands topic: no
//! input panics it, and only a signature by the key opens a command.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // A fixed key: a random input never carries its signature, so nothing may open.
    let key = cordon_wire::signing_key_from_base64("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").expect("key");
    let opened = cordon_wire::open(data, &key.verifying_key());
    // Well-formed envelopes with the real signature come from the seed corpus only.
    if let Ok(command) = opened {
        let resealed = cordon_wire::seal(&command, &key);
        assert!(cordon_wire::open(&resealed, &key.verifying_key()).is_ok());
    }
});
