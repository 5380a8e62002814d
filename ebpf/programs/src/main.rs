//! The eBPF programs that isolate a host (built for bpfel-unknown-none by enforcer/build.rs).
#![no_std]
#![no_main]
