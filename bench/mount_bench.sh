#!/bin/bash
# The homepool mount beside a bare drive and mergerfs over the same three loop drives, with
# ../shared/bench/poolbench (one interleaved run). Usage, as root, from the repository:
#   bench/mount_bench.sh [poolbench run options...]      e.g. --suite full --json bench/results/mount-full.json
# Targets: raw (the bare third drive), mergerfs (upstream's recommended options), homepool
# (a 1-copy folder) and homepool-2x (a 2-copy folder), in that order; TARGETS="raw homepool"
# picks some of them, in the order given; CODE=/tmp/old/src mounts another checkout's code.
# Everything is torn down on exit.
set -euo pipefail
W=${BENCH_DIR:-/var/tmp/homepool-bench}
source "$(dirname "$0")/pool_and_mergerfs.sh"
declare -A TARGET=([raw]="${D[2]}" [mergerfs]="$W/mergerfs" [homepool]="$W/pool/Videos" [homepool-2x]="$W/pool/Documents")
ARGS=()
for t in ${TARGETS:-raw mergerfs homepool homepool-2x}; do
    [ -n "${TARGET[$t]:-}" ] || { echo "mount_bench.sh: no target '$t' (raw, mergerfs, homepool, homepool-2x)" >&2; exit 2; }
    ARGS+=(--target "$t=${TARGET[$t]}")
done
"$PB" run "${ARGS[@]}" "$@"
