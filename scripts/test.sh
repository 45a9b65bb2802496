#!/usr/bin/env bash
# Warden's test command (README "Test"): everything CI checks, in the order a failure is cheapest to see.
#   bash scripts/test.sh
# PostgreSQL datastore tests run against a throwaway server that scripts/postgres.sh starts (and stops
# again) when WARDEN_TEST_POSTGRES_URL is not already set; without PostgreSQL they say they are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

# A whole run rebuilds little that incremental compilation would reuse, and its files doubled the
# build's footprint on disk (CI has failed for want of space). Set CARGO_INCREMENTAL=1 to keep it.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

step() { printf '\n==> %s\n' "$*"; }

step "formatting (cargo fmt --check)"
cargo fmt --all -- --check

step "no OpenSSL, no aws-lc-rs in the dependency graph"
for banned in aws-lc-rs aws-lc-sys openssl-sys native-tls; do
  if cargo tree --workspace -e normal,build -i "$banned" >/dev/null 2>&1; then
    echo "error: \`$banned\` is in the dependency graph (rustls with ring only)" >&2
    exit 1
  fi
done

if [ -z "${WARDEN_TEST_POSTGRES_URL:-}" ] && [ "${WARDEN_SKIP_POSTGRES:-}" != 1 ]; then
  step "starting a throwaway PostgreSQL (scripts/postgres.sh)"
  if pg_env=$(bash scripts/postgres.sh start); then
    eval "$pg_env"
    trap 'bash scripts/postgres.sh stop >/dev/null 2>&1 || true' EXIT
  else
    echo "warning: PostgreSQL could not be started; its datastore tests will be skipped" >&2
  fi
fi

# The tests drive real clients: curl and openssl s_client (refused certificates, the whole mesh).
missing=()
for tool in curl openssl; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
if [ "${#missing[@]}" -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  step "installing ${missing[*]} (apt-get): the tests' real clients"
  DEBIAN_FRONTEND=noninteractive apt-get update >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >/dev/null
fi

step "tests (cargo test --workspace)"
cargo test --workspace --no-fail-fast

step "the shipped policies validate and pass their tests"
cargo run --quiet -- policy validate policies
cargo run --quiet -- policy fmt --check policies
cargo run --quiet -- policy test policies

step "bench helpers' unit tests (python3 -m unittest)"
if ! command -v python3 >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing python3 (apt-get)"
  DEBIAN_FRONTEND=noninteractive apt-get update >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y python3 >/dev/null
fi
PYTHONDONTWRITEBYTECODE=1 python3 -m unittest discover -s bench -p 'test_*.py'

step "fuzz targets build on the stable toolchain"
cargo build --quiet --manifest-path fuzz/Cargo.toml

step "clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --quiet -- -D warnings
