#!/bin/bash
# The homepool mount beside a bare drive and mergerfs over the same three loop drives, with
# ../shared/bench/poolbench (one interleaved run). Usage, as root, from the repository:
#   bench/mount_bench.sh [poolbench run options...]      e.g. --suite full --json bench/results/mount-full.json
# Targets: raw (the bare third drive), mergerfs (upstream's recommended options), homepool
# (a 1-copy folder) and homepool-2x (a 2-copy folder), in that order; TARGETS="raw homepool"
# picks some of them, in the order given. Everything is torn down on exit.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PB=${POOLBENCH:-$ROOT/../shared/bench/poolbench}
W=${BENCH_DIR:-/var/tmp/homepool-bench}
HP="$ROOT/.venv/bin/homepool --pool $W/state"
mkdir -p "$W"
cleanup() {
    $HP unmount "$W/pool" 2>/dev/null || true
    "$PB" mergerfs down "$W/mergerfs" >/dev/null 2>&1 || true
    "$PB" drives down "$W/drives" >/dev/null 2>&1 || true
    rm -rf "$W/state" "$W/pool"
}
trap cleanup EXIT
cleanup
mkdir -p "$W/drives" "$W/pool"
mapfile -t D < <("$PB" drives up "$W/drives" --sizes 2G,3G,5G)
# poolbench's images are sparse: the first write to each region costs a block allocation in
# the host file, and which target lands on fresh regions is luck. Fill every drive once (then
# free it) so that no target pays it during the run (as bench/import_bench.py does).
for d in "${D[@]}"; do
    dd if=/dev/zero of="$d/fill" bs=4M oflag=direct status=none 2>/dev/null || true
    rm -f "$d/fill"
done
sync
$HP init >/dev/null
for d in "${D[@]}"; do $HP drive add "$d" >/dev/null; done
$HP folder set Documents --copies 2 >/dev/null
$HP folder set Videos --copies 1 >/dev/null
$HP mount "$W/pool" >/dev/null
"$PB" mergerfs up "$W/drives" "$W/mergerfs" >/dev/null
declare -A TARGET=([raw]="${D[2]}" [mergerfs]="$W/mergerfs" [homepool]="$W/pool/Videos" [homepool-2x]="$W/pool/Documents")
ARGS=()
for t in ${TARGETS:-raw mergerfs homepool homepool-2x}; do
    [ -n "${TARGET[$t]:-}" ] || { echo "mount_bench.sh: no target '$t' (raw, mergerfs, homepool, homepool-2x)" >&2; exit 2; }
    ARGS+=(--target "$t=${TARGET[$t]}")
done
"$PB" run "${ARGS[@]}" "$@"
