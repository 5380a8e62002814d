//! Empty library target: lets crates list `enforcer-ebpf` as a build-dependency so cargo rebuilds them when it changes.
#![no_std]
