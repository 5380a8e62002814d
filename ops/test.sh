#!/usr/bin/env bash
#! Sets up everything the tests need on a fresh machine, then runs every test: unit tests, the
#! rule data tests, and the kernel tests (real eBPF programs in network namespaces), then a short
#! run of every fuzz target. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
ops/install-toolchain.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --locked
cargo test --locked
# Every fuzz target for 30 s (what ops/fuzz.sh prints goes into RELIABILITY.md for longer runs).
ops/fuzz.sh 30
