#!/bin/bash
# pjdfstest (the POSIX filesystem test suite) inside the mount, as docs/benchmarks.md reports it:
# a pool over two ext4 loop drives, mounted with --allow-other (many tests run as uid 65534),
# the suite run as root with `prove -r` in a 2-copy folder (Documents) and in a 1-copy folder
# (Videos), then `homepool check`. Everything it makes is torn down on exit, even on failure.
# The suite is not packaged for Debian: build it from its sources first (docs/benchmarks.md,
# "POSIX: pjdfstest"). Usage, as root, from the repository:
#   scripts/pjdfstest.sh /var/tmp/pjdfstest            (both folders)
#   FOLDERS=Videos scripts/pjdfstest.sh /var/tmp/pjdfstest
#   BASELINE=1 scripts/pjdfstest.sh /var/tmp/pjdfstest (on a bare ext4 loop drive instead)
set -euo pipefail
SUITE=$(realpath "${1:?usage: scripts/pjdfstest.sh PJDFSTEST_DIR}")
[ -x "$SUITE/pjdfstest" ] && [ -d "$SUITE/tests" ] || { echo "pjdfstest.sh: no built suite in $SUITE" >&2; exit 2; }
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PB=${POOLBENCH:-$ROOT/../shared/bench/poolbench}
W=${WORK_DIR:-/var/tmp/homepool-pjdfstest}
HP="$ROOT/.venv/bin/homepool --pool $W/state"
cleanup() {
    cd /
    $HP unmount "$W/pool" >/dev/null 2>&1 || true
    "$PB" drives down "$W/drives" >/dev/null 2>&1 || true
    rm -rf "$W/state" "$W/pool"
}
trap cleanup EXIT
cleanup
mkdir -p "$W/drives" "$W/pool"
mapfile -t D < <("$PB" drives up "$W/drives" --sizes 2G,3G)
run() {  # DIR LABEL: the suite in DIR (chflags and granular are FreeBSD's)
    mkdir -p "$1/t"
    cd "$1/t"
    local tests
    tests=$(find "$SUITE/tests" -mindepth 1 -maxdepth 1 -type d ! -name chflags ! -name granular | sort)
    local started=$SECONDS
    # shellcheck disable=SC2086
    prove -r $tests >"$W/prove-$2.log" 2>&1 || true
    # The failures, if any (prove's summary report), and the totals; the whole output stays in $W.
    sed -n '/^Test Summary Report/,$p' "$W/prove-$2.log" | { grep -v '^Files=\|^Result' || true; } | sed "s/^/$2: /"
    grep -E '^(Files=|Result:)' "$W/prove-$2.log" | sed "s/^/$2: /"
    echo "$2: $((SECONDS - started)) s (the whole output: $W/prove-$2.log)"
    cd /
}
if [ -n "${BASELINE:-}" ]; then
    run "${D[0]}" ext4
    exit 0
fi
$HP init >/dev/null
for d in "${D[@]}"; do $HP drive add "$d" >/dev/null; done
$HP folder set Documents --copies 2 >/dev/null
$HP folder set Videos --copies 1 >/dev/null
$HP mount --allow-other "$W/pool" >/dev/null
for folder in ${FOLDERS:-Documents Videos}; do
    run "$W/pool/$folder" "$folder"
done
$HP check
