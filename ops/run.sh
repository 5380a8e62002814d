#!/usr/bin/env bash
#! Sets up and starts the host agent, cordon-enforcer, on this machine (run as root).
#! It restores an isolation recorded before a reboot and lifts timed isolations on time;
#! isolate and release with `cordon-enforcer isolate|release` beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
ops/install-toolchain.sh --no-broker
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --locked --release -p enforcer
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
install -m 0755 "$target_dir/release/cordon-enforcer" /usr/local/bin/cordon-enforcer
echo "[run] cordon-enforcer installed in /usr/local/bin; starting the agent (Ctrl-C stops the agent; an isolation stays in force)"
exec /usr/local/bin/cordon-enforcer run "$@"
