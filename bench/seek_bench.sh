#!/bin/bash
# Small reads from drives that seek (docs/benchmarks.md, "Small reads that wait for a drive").
# A 2-copy folder on three loop drives; the mount daemon's reads are held to READ_IOPS per
# drive (a blkio cgroup: 100, a spinning disk's random reads; 0: no limit). For each way the
# mount can take them (SLOW_READ_US: HOMEPOOL_SLOW_READ_US; 1000000000: never hands on),
# cold cache each time: 4k random reads by one fio job, by two at once, and opens of a small
# file by another program while one job reads. Usage, as root, from the repository:
#   bench/seek_bench.sh [ROUNDS]         e.g. READ_IOPS=0 FILE_MB=1024 bench/seek_bench.sh 3
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PB=${POOLBENCH:-$ROOT/../shared/bench/poolbench}
W=${BENCH_DIR:-/var/tmp/homepool-seek}
CG=/sys/fs/cgroup/blkio/homepool-seek
HP="$ROOT/.venv/bin/homepool --pool $W/state"
ROUNDS=${1:-2} IOPS=${READ_IOPS:-100} MB=${FILE_MB:-256}
cleanup() {
    $HP unmount "$W/pool" >/dev/null 2>&1 || true
    "$PB" drives down "$W/drives" >/dev/null 2>&1 || true
    rm -rf "$W"
    rmdir "$CG" 2>/dev/null || true
}
trap cleanup EXIT
cleanup
mkdir -p "$W/drives" "$W/pool" "$CG"
mapfile -t D < <("$PB" drives up "$W/drives" --sizes 2G,3G,5G)
for d in "${D[@]}"; do
    [ "$IOPS" = 0 ] || echo "$(lsblk -dno MAJ:MIN "$(findmnt -no SOURCE "$d")" | tr -d ' ') $IOPS" \
        > "$CG/blkio.throttle.read_iops_device"
done
$HP init >/dev/null
for d in "${D[@]}"; do $HP drive add "$d" >/dev/null; done
$HP folder set Documents --copies 2 >/dev/null
$HP mount "$W/pool" >/dev/null
for f in a b; do dd if=/dev/urandom of="$W/pool/Documents/$f" bs=1M count="$MB" status=none; done
echo small > "$W/pool/Documents/small"
$HP unmount "$W/pool" >/dev/null
cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }
reads() {  # FILE...: 4k random reads, one job per file, for 5 s: IOPS in all
    local args=()
    for f in "$@"; do args+=(--name="$f" --filename="$W/pool/Documents/$f"); done
    fio --rw=randread --bs=4k --size="${MB}M" --ioengine=psync --iodepth=1 --direct=0 --invalidate=0 \
        --randrepeat=1 --norandommap --time_based --runtime=5 --group_reporting --output-format=json "${args[@]}" \
        | python3 -c "import json, sys; print(round(json.load(sys.stdin)['jobs'][0]['read']['iops']))"
}
opens() {  # open and close the small file every 2 ms for 5 s
    python3 - "$W/pool/Documents/small" <<'PY'
import os, sys, time
took, end = [], time.monotonic() + 5
while time.monotonic() < end:
    start = time.perf_counter()
    os.close(os.open(sys.argv[1], os.O_RDONLY))
    took.append(time.perf_counter() - start)
    time.sleep(0.002)
took.sort()
print(f"{len(took)} opens, median {took[len(took) // 2] * 1e3:.2f} ms, 99th percentile {took[len(took) * 99 // 100] * 1e3:.2f} ms")
PY
}
echo "read IOPS per drive: ${IOPS/#0/no limit}; files of $MB MiB"
for r in $(seq "$ROUNDS"); do
    for slow in ${SLOW_READ_US:-1000 1000000000}; do
        HOMEPOOL_SLOW_READ_US=$slow $HP mount "$W/pool" >/dev/null
        pgrep -f "homepool --pool $W/state -v mount" > "$CG/cgroup.procs"
        cold; one=$(reads a)
        cold; two=$(reads a b)
        cold; reads a > "$W/bg" & during=$(opens); wait
        $HP unmount "$W/pool" >/dev/null
        echo "round $r, HOMEPOOL_SLOW_READ_US=$slow: one job $one IOPS; two jobs $two IOPS;" \
             "during one job's $(cat "$W/bg") IOPS: $during; mount: $(grep -o 'READ [0-9]* ([^)]*)' "$W/state/mount.log" | tail -1)"
    done
done
