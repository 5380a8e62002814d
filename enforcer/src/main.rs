//! `cordon-enforcer`: isolates this host with eBPF on command and lifts the isolation on time.
fn main() {}
