# Sourced by bench/mount_bench.sh and bench/cold_read.sh: three loop drives (2G/3G/5G), a
# homepool over them (Documents 2 copies, Videos 1) mounted at $W/pool with the code at $CODE
# (another checkout's src/; default this one), and mergerfs over the same drives at
# $W/mergerfs with poolbench's options. Sets ROOT, PB, HP and D (the drives); the caller sets
# W. Everything is torn down on exit.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PB=${POOLBENCH:-$ROOT/../shared/bench/poolbench}
HP="$ROOT/.venv/bin/homepool --pool $W/state"
mkdir -p "$W"
cleanup() {
    $HP unmount "$W/pool" >/dev/null 2>&1 || true
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
PYTHONPATH=${CODE:-} $HP mount "$W/pool" >/dev/null
"$PB" mergerfs up "$W/drives" "$W/mergerfs" >/dev/null
