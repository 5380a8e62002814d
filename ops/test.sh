#!/usr/bin/env bash
#! Sets up everything the tests need on a fresh machine, then runs every test: unit tests, the
#! rule data tests, and the kernel tests (real eBPF programs in network namespaces). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
ops/install-toolchain.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --locked
cargo test --locked
