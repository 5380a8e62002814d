#!/usr/bin/env bash
#! Installs what cordon needs to build and test, exactly as ../shared/TOOLCHAIN.md says (and
#! confluent-kafka for the Python producer example).
# Idempotent: every step is skipped when what it installs is already there.
# Usage: ops/install-toolchain.sh [--no-broker]   (--no-broker skips tansu, the test broker)
set -euo pipefail

want_broker=1
for arg in "$@"; do
  case "$arg" in
    --no-broker) want_broker=0 ;;
    *) echo "install-toolchain: unknown option '$arg' (known: --no-broker)" >&2; exit 2 ;;
  esac
done

say() { printf '[install-toolchain] %s\n' "$*"; }
export PATH="$HOME/.cargo/bin:$PATH"

if [ "$(id -u)" -ne 0 ]; then
  echo "install-toolchain: must run as root (it installs Debian packages)" >&2
  exit 1
fi

# Debian packages: LLVM 22 for bpf-linker, iproute2/nftables/iperf3 for the kernel tests and
# benchmarks, openssl (the command) for the tests' TLS certificates, libssl-dev and pkg-config for
# librdkafka's TLS and SASL, stunnel4 for the TLS listener the tests put in front of tansu,
# chromium and chromium-driver for the console's browser tests (nothing downloaded at run time).
need_pkgs=()
for pkg in llvm-22-dev libpolly-22-dev libzstd-dev iproute2 nftables iperf3 procps openssl libssl-dev pkg-config stunnel4 chromium chromium-driver; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_pkgs+=("$pkg")
done
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  say "apt-get install ${need_pkgs[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
else
  say "Debian packages present"
fi

# Nightly rust-src: the eBPF crate is built with -Z build-std=core.
if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
  say "rustup component add rust-src --toolchain nightly"
  rustup component add rust-src --toolchain nightly
else
  say "nightly rust-src present"
fi

# bpf-linker 0.13.0 against Debian's LLVM 22.
if ! bpf-linker --version 2>/dev/null | grep -q '0\.13\.0'; then
  say "cargo install bpf-linker 0.13.0 (about 2 minutes)"
  LLVM_PREFIX=/usr/lib/llvm-22 LLVM_SYS_221_PREFIX=/usr/lib/llvm-22 \
    cargo install bpf-linker --version 0.13.0 --locked --no-default-features --features llvm-22
else
  say "bpf-linker 0.13.0 present"
fi

# tansu 0.6.0, the Kafka-protocol broker the integration tests start.
if [ "$want_broker" -eq 1 ]; then
  if ! tansu --version 2>/dev/null | grep -q '0\.6\.0'; then
    say "cargo install tansu 0.6.0 (about 10 minutes on 2 cores)"
    cargo install tansu --version 0.6.0 --locked --features dynostore
  else
    say "tansu 0.6.0 present"
  fi
fi

# cargo-fuzz, for the fuzz targets (ops/fuzz.sh runs them with the nightly toolchain).
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  say "cargo install cargo-fuzz 0.13.2 (about 2 minutes)"
  cargo install cargo-fuzz --version 0.13.2 --locked
else
  say "cargo-fuzz present"
fi

# confluent-kafka, for the Python producer example (ops/examples), the demo and their tests.
if ! python3 -c 'import confluent_kafka' 2>/dev/null; then
  say "pip install confluent-kafka"
  python3 -m pip install --quiet --root-user-action=ignore 'confluent-kafka>=2.12,<3'
else
  say "confluent-kafka present"
fi

# bpffs, for the enforcer's pins.
if ! awk '$3=="bpf"{found=1} END{exit !found}' /proc/mounts; then
  say "mount -t bpf bpf /sys/fs/bpf"
  mount -t bpf bpf /sys/fs/bpf
fi
say "done"
