#!/bin/bash
# What each FUSE request costs the mount, phase by phase: a pool over two loop drives (a
# 1-copy folder), mounted afresh for each phase (create, stat, rename, unlink: N files of
# 4 KiB, one program doing one call after another; tar: extracting the Python stdlib, as
# poolbench's tree phase does), and the mount's own count at unmount:
# requests by kind, with the mean time each took from reading it to replying. Usage, as root,
# from the repository (CODE: another checkout's src/, to compare code on the same machine
# minutes apart; ROUNDS: alternations of the two; SIZES: the drives, 2G,3G: with 4 GiB free
# on its drive, a 1-copy file is written by the kernel itself, passed through: SIZES=6G,6G):
#   bench/request_times.sh [N]                      e.g. 3000
#   CODE=/tmp/old/src ROUNDS=3 bench/request_times.sh 3000
#   PIN=1 bench/request_times.sh 3000               (the mount and the program on one CPU: see
#                                                    docs/benchmarks.md, "One CPU for both sides")
# The phases' wall times move with the machine (a shared VM: 1.8 s and 2.4 s for the same
# code minutes apart), so compare code in alternation, never one run against another.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PB=${POOLBENCH:-$ROOT/../shared/bench/poolbench}
W=${BENCH_DIR:-/var/tmp/homepool-requests}
N=${1:-3000}
HP="$ROOT/.venv/bin/homepool --pool $W/state"
ON_CPU=${PIN:+taskset -c 1}
cleanup() {
    $HP unmount "$W/pool" 2>/dev/null || true
    "$PB" drives down "$W/drives" >/dev/null 2>&1 || true
    rm -rf "$W/state" "$W/pool"
}
trap cleanup EXIT

phase() {  # NAME CODE_PATH PYTHON: mount with the code at CODE_PATH, run PYTHON, unmount, report
    PYTHONPATH=$2 $ON_CPU $HP -v mount --foreground "$W/pool" >"$W/mount.log" 2>&1 &
    for _ in $(seq 100); do mountpoint -q "$W/pool" && break; sleep 0.1; done
    local took
    took=$($ON_CPU "$ROOT/.venv/bin/python" -c "import os, time
t0 = time.perf_counter()
$3
print(round((time.perf_counter() - t0) * 1000))")  # (the calls only: not the interpreter's start)
    $HP unmount "$W/pool" >/dev/null
    wait
    echo "  $1 $took ms: $(grep -o 'requests served: .*' "$W/mount.log" | cut -d' ' -f3-)"
}

one_round() {  # CODE_PATH (empty: this checkout)
    cleanup
    mkdir -p "$W/drives" "$W/pool"
    mapfile -t D < <("$PB" drives up "$W/drives" --sizes "${SIZES:-2G,3G}")
    $HP init >/dev/null
    for d in "${D[@]}"; do $HP drive add "$d" >/dev/null; done
    $HP folder set Videos --copies 1 >/dev/null
    local p="d = '$W/pool/Videos/x'; n = $N"
    phase mkdir "$1" "$p; os.mkdir(d)" >/dev/null
    phase create "$1" "$p
for i in range(n):
    fd = os.open(f'{d}/f{i}', os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, b'x' * 4096)
    os.close(fd)"
    phase stat "$1" "$p
for i in range(n): os.stat(f'{d}/f{i}')"
    phase rename "$1" "$p
for i in range(n): os.rename(f'{d}/f{i}', f'{d}/g{i}')"
    phase unlink "$1" "$p
for i in range(n): os.unlink(f'{d}/g{i}')"
    phase tar "$1" "$p
import subprocess; os.mkdir(f'{d}/t')
subprocess.run(['tar', '-xf', '$W/tree.tar', '-C', f'{d}/t'], check=True)"
}

STDLIB=$("$ROOT/.venv/bin/python" -c "import sysconfig; print(sysconfig.get_path('stdlib'))")
mkdir -p "$W"
tar -C "$(dirname "$STDLIB")" --exclude=site-packages --exclude=__pycache__ --exclude='libpython*' \
    -cf "$W/tree.tar" "$(basename "$STDLIB")"
for round in $(seq "${ROUNDS:-1}"); do
    if [ -n "${CODE:-}" ]; then
        echo "round $round, $CODE:"
        one_round "$CODE"
    fi
    echo "round $round, $ROOT/src:"
    one_round ""
done
