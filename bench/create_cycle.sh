#!/bin/bash
# Instructions the mount spends on one small file (bench/create_cycle.py: LOOKUP, CREATE,
# WRITE, FLUSH, RELEASE, GETATTR, in process), counted by callgrind: (400 files) - (0 files),
# / 400. Repeatable to a few hundred instructions whatever else the machine does, so two
# versions of the code compare where timings cannot (CODE: another checkout's src/). Usage,
# as root, from the repository:
#   bench/create_cycle.sh                       (Videos: 1 copy; FOLDERS="Videos Documents")
#   CODE=/tmp/old/src bench/create_cycle.sh
#   MOVE=1 bench/create_cycle.sh                (each file renamed and deleted too)
#   TAR=1 bench/create_cycle.sh                 (times, owner and mode set before close, as tar does)
#   ANSWERS=1 bench/create_cycle.sh             (a GETATTR and a LOOKUP through the transport, no file)
#   KEEP=1 bench/create_cycle.sh                (keeps $W/callgrind.0 and .400 for callgrind_annotate)
# Time-driven work (the drive snapshot is looked at again after 2 s, and valgrind runs the
# code some 50 times slower) is counted too: the figure is for comparing, not for seconds.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PB=${POOLBENCH:-$ROOT/../shared/bench/poolbench}
W=${BENCH_DIR:-/var/tmp/homepool-cycle}
LOOPS=400
HP="$ROOT/.venv/bin/homepool --pool $W/state"
command -v valgrind >/dev/null || { echo "create_cycle.sh: needs valgrind (apt-get install valgrind)" >&2; exit 2; }
cleanup() {
    "$PB" drives down "$W/drives" >/dev/null 2>&1 || true
    rm -rf "$W/state"; [ -n "${KEEP:-}" ] || rm -f "$W"/callgrind.*
}
trap cleanup EXIT
cleanup
mkdir -p "$W/drives"
mapfile -t D < <("$PB" drives up "$W/drives" --sizes 2G,3G)
$HP init >/dev/null
for d in "${D[@]}"; do $HP drive add "$d" >/dev/null; done
$HP folder set Videos --copies 1 >/dev/null
$HP folder set Documents --copies 2 >/dev/null
counted() {  # LOOPS FOLDER: instructions of a whole run
    LOOPS=$1 PYTHONPATH=${CODE:-} valgrind --tool=callgrind --callgrind-out-file="$W/callgrind.$1" \
        "$ROOT/.venv/bin/python" "$ROOT/bench/create_cycle.py" "$W/state" "$2" 2>&1 \
        | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
for folder in ${FOLDERS:-Videos}; do
    none=$(counted 0 "$folder")
    some=$(counted $LOOPS "$folder")
    echo "$folder: $(( (some - none) / LOOPS )) instructions per ${ANSWERS:+GETATTR + LOOKUP answered, no }file${MOVE:+ (created, renamed, deleted)}${TAR:+ (times, owner, mode set)} (${CODE:-$ROOT/src})"
done
