#!/usr/bin/env bash
#! The full chaos soak: the real system (tansu, `cordon serve` with its state on a 64 MiB tmpfs,
#! real agents isolating their own cgroups) under detections and operator calls for 15 minutes,
#! with 100 `kill -9`s (a third of the service, the rest of agents), broker outages of 10-60 s
#! (SIGSTOP/SIGCONT), full state disks and wall-clock steps; then the invariant checker's
#! figures (tests/tests/soak.rs, tests/src/chaos.rs). CI runs the short version (2 minutes,
#! 20 kills) as part of `cargo test`. Run as root, after ops/install-toolchain.sh; every
#! CORDON_SOAK_* setting can be overridden, e.g. CORDON_SOAK_SEED to run a soak again.
# Usage: ops/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
export CORDON_SOAK_SECONDS=${CORDON_SOAK_SECONDS:-900}
export CORDON_SOAK_KILLS=${CORDON_SOAK_KILLS:-100}
export CORDON_SOAK_HOSTS=${CORDON_SOAK_HOSTS:-5}
export CORDON_SOAK_OUTAGES=${CORDON_SOAK_OUTAGES:-5}
export CORDON_SOAK_OUTAGE_SECONDS=${CORDON_SOAK_OUTAGE_SECONDS:-10-60}
export CORDON_SOAK_DISK_FULLS=${CORDON_SOAK_DISK_FULLS:-4}
export CORDON_SOAK_CLOCK_STEPS=${CORDON_SOAK_CLOCK_STEPS:-8}
cargo build --locked
exec cargo test --locked --test soak
