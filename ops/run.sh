#!/usr/bin/env bash
#! Sets up and starts cordon's main job on this machine: `cordon serve`, the orchestrator, on the
#! embedded Kafka-protocol broker (no Kafka needed), with the example rules, a new command-signing
#! key and an API token. Also installs `cordon-enforcer`, the host agent. Run as root.
#
# Idempotent: what exists (toolchain, /etc/cordon/cordon.toml, rules, keys) is kept, so a second
# run only starts the service again. The embedded broker keeps nothing across restarts; for
# production, set [kafka] brokers in /etc/cordon/cordon.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "ops/run.sh: run as root (it installs packages and writes /etc/cordon and /var/lib/cordon)" >&2
  exit 1
fi
ops/install-toolchain.sh --no-broker
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --locked --release -p orchestrator -p enforcer
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
install -m 0755 "$target_dir/release/cordon" /usr/local/bin/cordon
install -m 0755 "$target_dir/release/cordon-enforcer" /usr/local/bin/cordon-enforcer

etc=/etc/cordon
mkdir -p "$etc"
if [ ! -d "$etc/rules" ]; then
  cp -r rules/examples "$etc/rules"
  echo "[run] example rules copied to $etc/rules (edit them; \`cordon rules check $etc/rules\` validates)"
fi
if [ ! -f "$etc/signing.key" ]; then
  cordon keygen --out "$etc"
fi
if [ ! -f "$etc/cordon.toml" ]; then
  cat > "$etc/cordon.toml" <<EOF
# cordon serve's configuration, written by ops/run.sh. No [kafka] brokers: the embedded broker.
[rules]
dir = "$etc/rules"
[state]
dir = "/var/lib/cordon"
[signing]
key_file = "$etc/signing.key"     # agents hold $etc/signing.pub
[api]
listen = "127.0.0.1:8700"         # the token is created in /var/lib/cordon/api-token
EOF
  echo "[run] wrote $etc/cordon.toml"
fi
cat <<EOF
[run] starting cordon serve (Ctrl-C stops it). From another terminal:
        export CORDON_TOKEN=\$(cat /var/lib/cordon/api-token)
        cordon hosts
        cordon isolate web-01 --for 15m --reason "IR-1234"     # a host whose agent listens on this broker
        cordon host web-01
EOF
exec /usr/local/bin/cordon serve --config "$etc/cordon.toml"
