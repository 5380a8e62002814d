#!/usr/bin/env bash
#! The cordon demo: on this machine, in network namespaces and a cgroup of its own, a detection
#! cuts a "compromised" demo host off its network and the deadline lets it back on. Run as root,
#! after ops/run.sh or ops/test.sh has built the binaries. It touches nothing of the machine's
#! own network and removes everything it created, whatever happens.
#
# The demo host is a network namespace (198.19.250.1) and a cgroup: its "applications" run in
# both. Its peer, a web server, is another namespace (198.19.250.2) behind a veth pair.
# `cordon serve` runs beside the host on the embedded broker; `cordon-enforcer run` runs inside
# the host's cgroup, with the broker as its management channel.
#
# Environment: CORDON_BIN_DIR (where `cordon` and `cordon-enforcer` are; default: the release
# build, else the debug one), CORDON_DEMO_SECONDS (the isolation's duration, default 20).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${CORDON_DEMO_SECONDS:-20}
if [ "$(id -u)" -ne 0 ]; then
  echo "ops/demo.sh: run as root (it creates network namespaces and a cgroup, and loads eBPF programs)" >&2
  exit 1
fi
if [ -z "${CORDON_BIN_DIR:-}" ]; then
  target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
  # ops/run.sh builds the release binaries, ops/test.sh the debug ones: either will do.
  CORDON_BIN_DIR="$target_dir/release"
  [ -x "$CORDON_BIN_DIR/cordon-enforcer" ] || CORDON_BIN_DIR="$target_dir/debug"
fi
cordon="$CORDON_BIN_DIR/cordon"
enforcer="$CORDON_BIN_DIR/cordon-enforcer"
for binary in "$cordon" "$enforcer"; do
  if [ ! -x "$binary" ]; then
    echo "ops/demo.sh: $binary is missing: build first (ops/run.sh, or cargo build --release -p orchestrator -p enforcer)" >&2
    exit 1
  fi
done
python3 -c 'import confluent_kafka' 2>/dev/null || {
  echo "ops/demo.sh: the demo publishes its detection with Python's confluent-kafka: pip install confluent-kafka" >&2
  exit 1
}

name="cordon-demo-$$"
host_ns="$name-host"
peer_ns="$name-peer"
cgroup_root=$(awk '$3=="cgroup2"{print $2; exit}' /proc/mounts)
[ -n "$cgroup_root" ] || { echo "ops/demo.sh: no cgroup v2 mounted" >&2; exit 1; }
cgroup="$cgroup_root/$name"
pins="/sys/fs/bpf/$name"
dir=$(mktemp -d "/tmp/$name.XXXX")
host_ip=198.19.250.1
peer_ip=198.19.250.2
pids=()

# A background job here is a subshell whose child (nsenter, then cordon) outlives a signal to the
# subshell alone: every process under each job is asked to stop, given 10 s (cordon serve shuts
# down in order), then killed.
tree_of() {
  local child
  echo "$1"
  for child in $(pgrep -P "$1" 2>/dev/null); do tree_of "$child"; done
}

cleanup() {
  local all=() pid
  for pid in "${pids[@]}"; do mapfile -t -O "${#all[@]}" all < <(tree_of "$pid"); done
  for pid in "${all[@]}"; do kill "$pid" 2>/dev/null || true; done
  for _ in $(seq 100); do
    local alive=0
    for pid in "${all[@]}"; do
      # A zombie (exited, not yet reaped by `wait`) counts as stopped.
      local state; state=$(ps -o stat= -p "$pid" 2>/dev/null || true)
      [ -n "$state" ] && [ "${state#Z}" = "$state" ] && alive=1
    done
    [ "$alive" -eq 0 ] && break
    sleep 0.1
  done
  for pid in "${all[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$pins"
  ip netns delete "$host_ns" 2>/dev/null || true
  ip netns delete "$peer_ns" 2>/dev/null || true
  if [ -d "$cgroup" ]; then
    for _ in $(seq 50); do
      while read -r pid; do kill -9 "$pid" 2>/dev/null || true; done < "$cgroup/cgroup.procs"
      rmdir "$cgroup" 2>/dev/null && break
      sleep 0.1
    done
  fi
  rm -rf "$dir"
}
trap cleanup EXIT
# Ctrl-C, kill and hang-up end the demo through the same clean-up.
trap 'exit 130' INT TERM HUP

if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold='' plain=''; fi
say() { printf '\n%s%s%s\n' "$bold" "$*" "$plain"; }
show() { printf '    %s\n' "$@"; }
fail() { printf '\nDEMO FAILED: %s\n' "$*" >&2; exit 1; }
# Runs a command as one of the demo host's applications: in its cgroup and its namespace.
# (nsenter, not `ip netns exec`: that remounts /sys, hiding the cgroup and bpffs mounts.)
on_host() { bash -c 'echo $$ > "$0/cgroup.procs" && exec nsenter --net="/run/netns/$1" "${@:2}"' "$cgroup" "$host_ns" "$@"; }
in_ns() { local ns=$1; shift; nsenter --net="/run/netns/$ns" "$@"; }
# Prints "ok" or the error of one new TCP connection from the demo host to the peer's web server.
connect() {
  on_host python3 -c '
import socket, sys
try:
    socket.create_connection(("'"$peer_ip"'", 8080), timeout=2).close(); print("ok")
except OSError as error:
    print(error.strerror or str(error))'
}
wait_for() { # FILE TEXT SECONDS
  for _ in $(seq $(( $3 * 10 ))); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  fail "no '$2' in $1 after $3 s: $(tail -3 "$1" 2>/dev/null)"
}

say "Setting up a demo host and its peer (namespaces $host_ns and $peer_ns, cgroup $cgroup)"
mkdir -p "$cgroup"
ip netns add "$host_ns"
ip netns add "$peer_ns"
ip -n "$host_ns" link add demo0 type veth peer name demo1 netns "$peer_ns"
ip -n "$host_ns" addr add "$host_ip/24" dev demo0
ip -n "$peer_ns" addr add "$peer_ip/24" dev demo1
for ns in "$host_ns" "$peer_ns"; do ip -n "$ns" link set lo up; done
ip -n "$host_ns" link set demo0 up
ip -n "$peer_ns" link set demo1 up
in_ns "$peer_ns" python3 -m http.server 8080 --bind "$peer_ip" > "$dir/web.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do [ "$(connect)" = ok ] && break; sleep 0.1; done
show "demo host $host_ip, peer web server $peer_ip:8080"

say "Starting cordon serve on the embedded broker, with one rule"
mkdir -p "$dir/rules"
cat > "$dir/rules/ransomware.yaml" <<EOF
id: ransomware
title: Ransomware encrypting files
detection:
  selection:
    finding_info.attacks.technique.uid: T1486
    severity_id|gte: 4
  condition: selection
response:
  isolate:
    mode: automatic
    duration: ${seconds}s
EOF
"$cordon" keygen --out "$dir/keys" > /dev/null
cat > "$dir/cordon.toml" <<EOF
[rules]
dir = "$dir/rules"
[state]
dir = "$dir/service"
[signing]
key_file = "$dir/keys/signing.key"
[api]
listen = "127.0.0.1:8700"
[agents]
resend_after_seconds = 2
EOF
in_ns "$host_ns" "$cordon" serve --config "$dir/cordon.toml" > "$dir/serve.log" 2>&1 &
pids+=($!)
wait_for "$dir/serve.log" "consuming" 30
broker=$(sed -n 's/.*embedded Kafka-protocol broker at \([0-9.]*:[0-9]*\).*/\1/p' "$dir/serve.log" | head -1)
[ -n "$broker" ] || fail "cordon serve did not say where its broker is"
show "rule: a ransomware detection (T1486, severity 4+) isolates its host for ${seconds} s" \
     "embedded broker at $broker (it keeps nothing across restarts)"
cordon_cli() { in_ns "$host_ns" "$cordon" "$@" --api http://127.0.0.1:8700 --token-file "$dir/service/api-token" --operator demo; }

say "Starting the agent, cordon-enforcer, inside the demo host"
cat > "$dir/enforcer.toml" <<EOF
host_id = "demo-host"
heartbeat_seconds = 1
[kafka]
brokers = "$broker"
fetch_wait_ms = 10
[signing]
public_key_file = "$dir/keys/signing.pub"
EOF
# The agent signs its reports with its own key; cordon applies them only once it is enrolled.
agent_key=$("$enforcer" --cgroup "$cgroup" --state-dir "$dir/agent" --config "$dir/enforcer.toml" keygen 2>/dev/null)
echo "$agent_key" | cordon_cli agents enroll demo-host --key - --reason "demo agent" > /dev/null
show "agent key $agent_key enrolled for demo-host (cordon agents enroll)"
on_host "$enforcer" --cgroup "$cgroup" --pin-dir "$pins" --state-dir "$dir/agent" --config "$dir/enforcer.toml" run > "$dir/agent.log" 2>&1 &
pids+=($!)
wait_for "$dir/agent.log" "command channel connected" 30
show "$(grep -m1 'command channel connected' "$dir/agent.log" | sed 's/^.*INFO //')"

say "Before: the demo host reaches its peer"
show "new connection to $peer_ip:8080: $(connect)"
on_host python3 -u -c '
import socket, time
s = socket.create_connection(("'"$peer_ip"'", 8080)); print("connected", flush=True)
s.settimeout(None)
try:
    while s.recv(64): pass
    print("closed by the peer")
except OSError as error:
    print("cut:", error.strerror or error)' > "$dir/held.log" 2>&1 &
pids+=($!)
wait_for "$dir/held.log" "connected" 5
show "a long-lived connection is open (like a C2 channel an attacker holds)"

say "An EDR reports ransomware on demo-host"
published=$(date +%s%N)
in_ns "$host_ns" python3 ops/examples/produce-detection.py --brokers "$broker" --host demo-host \
  --severity 5 --technique T1486 --title "Ransomware encrypting files" | sed 's/^/    /'
wait_for "$dir/held.log" "cut:" 10
refused=$(connect)
elapsed_ms=$(( ($(date +%s%N) - published) / 1000000 ))
show "the long-lived connection: $(grep 'cut:' "$dir/held.log")" \
     "new connection to $peer_ip:8080: $refused" \
     "(both seen $elapsed_ms ms after the publishing script started, its own start-up included)"
[ "$refused" = "Operation not permitted" ] || fail "a new connection was not refused: $refused"
for _ in $(seq 50); do cordon_cli hosts --tag "ISOLATED FROM NETWORK" | grep -q "demo-host *isolated " && break; sleep 0.1; done
show "cordon hosts --tag \"ISOLATED FROM NETWORK\":"
cordon_cli hosts --tag "ISOLATED FROM NETWORK" | sed 's/^/      /'
cordon_cli hosts --tag "ISOLATED FROM NETWORK" | grep -q "demo-host *isolated " || fail "demo-host is not listed as isolated"
seen=$(cordon_cli host demo-host --json | python3 -c 'import json,sys; v=json.load(sys.stdin)["agent"]; print(v["last_seen"], v["isolated"])')
show "the management channel stays up: the agent's last report reached cordon at ${seen% *} (isolated: ${seen#* })"

say "Waiting out the ${seconds} s deadline"
for _ in $(seq $(( seconds * 10 + 100 ))); do
  [ "$(connect)" = ok ] && break
  sleep 0.1
done
after=$(connect)
show "new connection to $peer_ip:8080: $after"
[ "$after" = ok ] || fail "traffic did not flow again after the deadline"
for _ in $(seq 50); do cordon_cli host demo-host | grep -q "State: *released" && break; sleep 0.1; done
show "cordon host demo-host:"
cordon_cli host demo-host | sed 's/^/      /'
cordon_cli host demo-host | grep -q "State: *released" || fail "cordon does not show demo-host released"

say "Demo complete: the host was cut off by a detection and let back on at its deadline. Cleaning up."
