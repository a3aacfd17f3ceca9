#!/bin/bash
# 4 KiB random reads of a cold 2-copy file (read through the mount's daemon, not passed
# through), beside the same on mergerfs and on the bare drive holding one of its copies:
# poolbench's "rand read 4k QD1, cold" (fio psync, the page cache dropped before each), for a
# closer look at one row. The pool and mergerfs of bench/mount_bench.sh (made by
# bench/pool_and_mergerfs.sh), a 512 MiB file written through each mount, then ROUNDS rounds
# of: raw (each copy), homepool-2x, mergerfs, RUNTIME seconds each. Prints IOPS, and the mount's own count of its
# READs at unmount (mean time from reading each to replying; how many waited for a drive).
# Usage, as root, from the repository (CODE: another checkout's src/, for the mount only):
#   bench/cold_read.sh
#   CODE=/tmp/old/src ROUNDS=3 RUNTIME=3 bench/cold_read.sh
# The machine is shared: compare code in alternation (run the two one after the other,
# twice), and homepool against mergerfs within a round.
set -euo pipefail
W=${BENCH_DIR:-/var/tmp/homepool-coldread}
SIZE=512M
source "$(dirname "$0")/pool_and_mergerfs.sh"
for f in "$W/pool/Documents/big" "$W/mergerfs/big"; do
    fio --name=w --filename="$f" --rw=write --bs=1M --size=$SIZE --end_fsync=1 --output=/dev/null
done
cold_iops() {  # FILE LABEL
    sync
    echo 3 > /proc/sys/vm/drop_caches
    fio --name=pb --filename="$1" --rw=randread --bs=4k --size=$SIZE --ioengine=psync --iodepth=1 --direct=0 \
        --fallocate=none --invalidate=0 --randrepeat=1 --norandommap --numjobs=1 --time_based \
        --runtime="${RUNTIME:-3}" --output-format=json \
        | python3 -c 'import json, sys; print("  %s: %d IOPS" % (sys.argv[1], json.load(sys.stdin)["jobs"][0]["read"]["iops"]))' "$2"
}
for r in $(seq "${ROUNDS:-3}"); do
    echo "round $r"
    for d in "${D[@]}"; do
        [ -f "$d/HomePool/Documents/big" ] && cold_iops "$d/HomePool/Documents/big" "raw (the copy on $(basename "$d"))"
    done
    cold_iops "$W/pool/Documents/big" homepool-2x
    cold_iops "$W/mergerfs/big" mergerfs
done
$HP unmount "$W/pool" >/dev/null
grep -o 'READ [0-9]* ([^)]*)' "$W/state/mount.log" | tail -1
