#!/usr/bin/env bash
# A profile-guided (PGO) production build of `warden`, documented in bench/README.md:
#   1. build `warden` instrumented (-Cprofile-generate, the production profile);
#   2. train it: bring up the bench mesh with it (bench/sidecar.sh HOLD=1: CA, agent, the sidecar
#      pair, the peers kit's backend) and drive a training load through the pair and the inbound,
#      with other clients' settings than the measured runs use; stopping the mesh writes the
#      profiles (every `warden` process writes its own on exit);
#   3. merge them (llvm-profdata of the LLVM major version rustc was built with);
#   4. build `warden` again with them (-Cprofile-use), the functions the sidecars ran placed
#      together (lld --symbol-ordering-file, from bench/pgo_order.py: what both ran, then what
#      only the inbound ran, then only the outbound, hottest first), so a sidecar's code is a
#      few contiguous megabytes of the executable rather than spread over it.
# Prints the binary's path; bench/sidecar.sh measures it with WARDEN_BIN=<that path>.
#   bench/pgo.sh                       (needs what bench/sidecar.sh needs, plus llvm-profdata)
#   PGO_DIR=/elsewhere TRAIN_D=8 bench/pgo.sh
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PGO_DIR=${PGO_DIR:-$ROOT/target/pgo}
TRAIN_D=${TRAIN_D:-5}     # seconds per training load
OHA=${OHA:-$(command -v oha || echo "$HOME/.cargo/bin/oha")}

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

case $TRAIN_D in '' | *[!0-9]*) TRAIN_D_OK=0 ;; *) TRAIN_D_OK=$((10#$TRAIN_D >= 1)) ;; esac
[ "$TRAIN_D_OK" = 1 ] || die "TRAIN_D must be a whole number of seconds, at least 1, not \`$TRAIN_D\`"
# Paths go into RUSTFLAGS, which splits on whitespace.
case $PGO_DIR in *[[:space:]]*) die "PGO_DIR must not contain whitespace (it goes into RUSTFLAGS): \`$PGO_DIR\`";; esac
HOST=$(rustc -vV | sed -n 's/^host: //p')
LLVM_MAJOR=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
[ -n "$HOST" ] && [ -n "$LLVM_MAJOR" ] || die "cannot read the host triple and LLVM version from \`rustc -vV\`"
if [ -n "${LLVM_PROFDATA:-}" ]; then
  [ -f "$LLVM_PROFDATA" ] && [ -x "$LLVM_PROFDATA" ] || die "LLVM_PROFDATA=\`$LLVM_PROFDATA\` is not an executable file"
  PROFDATA=$LLVM_PROFDATA
else
  PROFDATA=$(command -v "llvm-profdata-$LLVM_MAJOR" || command -v llvm-profdata || true)
  [ -n "$PROFDATA" ] || die "no llvm-profdata for LLVM $LLVM_MAJOR (rustc's): apt-get install llvm-$LLVM_MAJOR, or set LLVM_PROFDATA"
fi
"$PROFDATA" --version | grep -q "LLVM version $LLVM_MAJOR\." \
  || die "\`$PROFDATA\` is not LLVM $LLVM_MAJOR (rustc's); its raw profiles would not be read: set LLVM_PROFDATA"
[ -x "$OHA" ] || die "no oha at \`$OHA\` (cargo install oha@1.16.0 --locked, or set OHA)"
for tool in wrk h2load curl; do
  command -v "$tool" >/dev/null || die "\`$tool\` is not installed (see bench/README.md)"
done

RAW=$PGO_DIR/raw
PROFILE=$PGO_DIR/warden.profdata
mkdir -p "$PGO_DIR"
rm -rf "$RAW" "$PROFILE"

# --target: RUSTFLAGS then reach only what is built for the target, not build scripts and proc
# macros (which would write profiles of their own while building).
say "1/4 building warden instrumented (target dir $PGO_DIR/gen)"
RUSTFLAGS="-Cprofile-generate=$RAW" CARGO_TARGET_DIR=$PGO_DIR/gen \
  cargo build --manifest-path "$ROOT/Cargo.toml" --profile production --bin warden --target "$HOST" >&2
GEN_BIN=$PGO_DIR/gen/$HOST/production/warden
rm -rf "$RAW"

say "2/4 training: the bench mesh with the instrumented binary"
HOLD_RESULTS=$PGO_DIR/train
rm -rf "$HOLD_RESULTS"
# One profile per process (%p), so the sidecars' own can be told from the CA's, the agent's and
# the CLI's.
LLVM_PROFILE_FILE="$RAW/warden-%p.profraw" WARDEN_BIN=$GEN_BIN HOLD=1 RESULTS=$HOLD_RESULTS \
  bash "$ROOT/bench/sidecar.sh" > "$PGO_DIR/train.log" 2>&1 &
MESH=$!
stop_mesh() {
  kill -TERM "$MESH" 2>/dev/null || true
  wait "$MESH" 2>/dev/null || true
}
trap stop_mesh EXIT
for _ in $(seq 1 900); do
  [ -s "$HOLD_RESULTS/hold.env" ] && break
  kill -0 "$MESH" 2>/dev/null || { cat "$PGO_DIR/train.log" >&2; die "the bench mesh did not come up"; }
  sleep 0.2
done
[ -s "$HOLD_RESULTS/hold.env" ] || die "the bench mesh did not come up within 180 s (see $PGO_DIR/train.log)"
WARDEN_IN_PID='' WARDEN_OUT_PID='' WARDEN_PAIR_H1='' WARDEN_PAIR_H2C='' WARDEN_INBOUND='' WARDEN_ADMIN_IN='' WARDEN_ADMIN_OUT='' CLIENT_SVID_DIR=''
for kv in $(cat "$HOLD_RESULTS/hold.env"); do
  case $kv in
    WARDEN_IN_PID=* | WARDEN_OUT_PID=* | WARDEN_PAIR_H1=* | WARDEN_PAIR_H2C=* | WARDEN_INBOUND=* | WARDEN_ADMIN_IN=* | WARDEN_ADMIN_OUT=* | CLIENT_SVID_DIR=*)
      printf -v "${kv%%=*}" '%s' "${kv#*=}" ;;
  esac
done
S=$CLIENT_SVID_DIR
SV=(--cacert "$S/bundle.pem" --cert "$S/svid.pem" --key "$S/svid.key")
train() { # WHAT CMD...
  say "    $1"
  shift
  "$@" > /dev/null 2>&1 || die "training load failed: $*"
}
T=$TRAIN_D
train "pair, HTTP/1.1 (wrk -c16)" wrk -t1 -c16 -d"${T}s" "$WARDEN_PAIR_H1"
train "pair, HTTP/2 (h2load -c4 -m32)" h2load -c4 -m32 -D "$T" "$WARDEN_PAIR_H2C"
train "pair, denied POSTs (oha -c8)" "$OHA" -z "${T}s" --no-tui -c 8 -m POST "$WARDEN_PAIR_H1"
train "pair, 500 req/s (oha -q)" "$OHA" -z "${T}s" --no-tui -q 500 -c 4 "$WARDEN_PAIR_H1"
train "one hop, HTTP/1.1 (oha -c16)" "$OHA" -z "${T}s" --no-tui -c 16 "${SV[@]}" "$WARDEN_INBOUND"
train "one hop, HTTP/2 (oha -c4 -p32)" "$OHA" -z "${T}s" --no-tui --http2 -c 4 -p 32 "${SV[@]}" "$WARDEN_INBOUND"
train "one hop, a handshake per request (oha -c8)" "$OHA" -z "${T}s" --no-tui --disable-keepalive -c 8 "${SV[@]}" "$WARDEN_INBOUND"
train "metrics" curl -sf "${WARDEN_ADMIN_IN}metrics" "${WARDEN_ADMIN_OUT}metrics"
stop_mesh
trap - EXIT
IN_RAW=$RAW/warden-$WARDEN_IN_PID.profraw
OUT_RAW=$RAW/warden-$WARDEN_OUT_PID.profraw
for f in "$IN_RAW" "$OUT_RAW"; do
  [ -s "$f" ] || die "no profile from a sidecar at $f (did it exit cleanly? see $PGO_DIR/train.log)"
done

say "3/4 merging $(ls "$RAW"/*.profraw | wc -l) profiles with $PROFDATA; the symbol order"
"$PROFDATA" merge -o "$PROFILE" "$RAW"/*.profraw
"$PROFDATA" show --all-functions --counts "$IN_RAW" > "$PGO_DIR/inbound.show"
"$PROFDATA" show --all-functions --counts "$OUT_RAW" > "$PGO_DIR/outbound.show"
"$PROFDATA" show --all-functions --counts "$PROFILE" > "$PGO_DIR/all.show"
ORDER=$PGO_DIR/symbol-order.txt
python3 "$ROOT/bench/pgo_order.py" "$PGO_DIR/inbound.show" "$PGO_DIR/outbound.show" "$PGO_DIR/all.show" > "$ORDER"
rm -f "$PGO_DIR/inbound.show" "$PGO_DIR/outbound.show" "$PGO_DIR/all.show"
LINK_ORDER=""
if readelf -p .comment "$GEN_BIN" 2>/dev/null | grep -q 'Linker: LLD'; then
  # Profile names of inlined-away functions have no symbol left: not worth a warning each.
  # Packed relative relocations (DT_RELR, glibc >= 2.36): the 0.6 MB table of PIE relocations
  # that every process reads at start-up shrinks to a few kilobytes.
  LINK_ORDER="-Clink-arg=-Wl,--symbol-ordering-file=$ORDER -Clink-arg=-Wl,--no-warn-symbol-ordering"
  LINK_ORDER="$LINK_ORDER -Clink-arg=-Wl,-z,pack-relative-relocs"
else
  say "    the linker is not lld: building without the symbol order"
fi

say "4/4 building warden with the profile (target dir $PGO_DIR/use)"
RUSTFLAGS="-Cprofile-use=$PROFILE $LINK_ORDER" CARGO_TARGET_DIR=$PGO_DIR/use \
  cargo build --manifest-path "$ROOT/Cargo.toml" --profile production --bin warden --target "$HOST" >&2
OUT=$PGO_DIR/use/$HOST/production/warden
"$OUT" --version > /dev/null || die "the PGO build does not run"
say "done: $OUT"
echo "$OUT"
