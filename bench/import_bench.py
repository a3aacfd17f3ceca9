#!/usr/bin/env python3
"""Benchmark: `homepool import` against `cp -r` onto one bare drive, in one interleaved run.

Workloads (issue 2): (a) one 1 GiB file, (b) 10,000 small files (4 KiB, in 100 directories),
each imported into a 1-copy folder and into a 2-copy folder. The baseline is `cp -r` onto a
bare member drive; since `homepool import` returns only when the data is durable (fsync /
syncfs), the fair baseline is `cp -r` followed by `sync -f` of that drive, and both are shown.

Drives are loop-mounted ext4 images made by ../shared/bench/poolbench (`drives up`, direct-I/O
loop devices), one bare drive for cp and two for the pool, so a 2-copy import writes its two
copies to two different drives. Each drive is filled with zeros once and emptied before the
runs, so that the sparse images' one-time block allocation is paid by none of the targets.
The sources live in /dev/shm, so every target reads from memory and the numbers are about the
write path. Every timed run starts after `sync` and a dropped page cache.

A third baseline, `cp -r` to both pool drives at once (then sync), is this machine's ceiling
for writing two copies: the loop drives share one host disk and one page cache, so two copies
cost about twice one here, however parallel the writes.

Each measured run is the full CLI command (`homepool import -q SRC DEST`, Python start-up
included) timed from outside; targets are interleaved, rep by rep.

Usage (root): python bench/import_bench.py [--reps 5] [--big 1G] [--small 10000] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
POOLBENCH = Path(os.environ.get("POOLBENCH", REPO.parent / "shared" / "bench" / "poolbench"))
HOMEPOOL = [sys.executable, "-m", "homepool"]


def sh(*args: str | Path, env: dict[str, str] | None = None) -> None:
    subprocess.run([str(a) for a in args], check=True, env=env, stdout=subprocess.DEVNULL)


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1].upper()] if text[-1].upper() in units else int(text)


def make_sources(shm: Path, big: int, small: int) -> dict[str, Path]:
    src_big = shm / "big"
    src_big.mkdir(parents=True)
    with open(src_big / "big.bin", "wb") as f:
        chunk = os.urandom(1 << 20)
        for _ in range(big >> 20):
            f.write(chunk)
    src_small = shm / "small"
    for i in range(small):
        d = src_small / f"dir{i // 100:03d}"
        if i % 100 == 0:
            d.mkdir(parents=True)
        (d / f"file{i:05d}.bin").write_bytes(os.urandom(4096))
    return {"big": src_big, "small": src_small}


def reset_pool(state: Path, pool_drives: list[Path], env: dict[str, str]) -> None:
    shutil.rmtree(state, ignore_errors=True)
    for d in pool_drives:
        for name in ("HomePool", ".homepool"):
            shutil.rmtree(d / name, ignore_errors=True)
    sh(*HOMEPOOL, "init", env=env)
    for d in pool_drives:
        sh(*HOMEPOOL, "drive", "add", d, env=env)
    sh(*HOMEPOOL, "folder", "add", "One", "--copies", "1", env=env)
    sh(*HOMEPOOL, "folder", "add", "Two", "--copies", "2", env=env)
    sh("sync")


def settle() -> None:
    """Every timed run starts from the same memory state: dirty data written, page cache
    dropped (the sources are on tmpfs, which this does not touch). On this VM, filling page
    cache is far slower right after memory was freed; without this, whichever target ran
    after a big delete would pay for it."""
    sh("sync")
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def timed(fn) -> float:
    settle()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--big", default="1G")
    ap.add_argument("--small", type=int, default=10_000)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp/homepool-import-bench"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("import_bench: needs root (loop-mounted drives)")
    if not POOLBENCH.exists():
        sys.exit(f"import_bench: {POOLBENCH} not found (set POOLBENCH=...)")
    big = parse_size(args.big)
    work = args.workdir
    shm = Path("/dev/shm/homepool-import-bench")
    shutil.rmtree(shm, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    gib = max(2, (2 * big >> 30) + 1)
    sizes = f"{gib}G,{gib}G,{gib}G"
    out = subprocess.run([sys.executable, str(POOLBENCH), "drives", "up", str(work), "--sizes", sizes],
                         check=True, capture_output=True, text=True).stdout.split()
    bare, d1, d2 = (Path(p) for p in out)
    state = work / "state"
    env = {**os.environ, "HOMEPOOL_POOL": str(state)}
    samples: dict[str, list[float]] = {}
    try:
        # poolbench's images are sparse: the first write to each region costs a block
        # allocation in the host file. Fill every drive once (then free it) so that no target
        # pays that cost during the measured runs and all three drives start alike.
        for d in (bare, d1, d2):
            subprocess.run(["dd", "if=/dev/zero", f"of={d}/fill", "bs=4M", "oflag=direct"],
                           capture_output=True)
            (d / "fill").unlink()
        sh("sync")
        sources = make_sources(shm, big, args.small)
        workloads = {"big": big, "small": args.small * 4096}
        for rep in range(-1, args.reps):  # rep -1: untimed warm-up (sparse images allocate blocks)
            for wl, src in sources.items():
                # cp -r onto the bare drive, without and with making it durable
                dest = bare / "cp"

                def cp(dest: Path = dest, src: Path = src) -> None:
                    sh("cp", "-r", src, dest)

                shutil.rmtree(dest, ignore_errors=True)
                sh("sync")
                settle()
                t0 = time.perf_counter()
                cp()
                t_cp = time.perf_counter() - t0
                sh("sync", "-f", bare)
                t_cp_sync = time.perf_counter() - t0
                # The ceiling for two copies on this machine: cp to both pool drives at once.
                for d in (d1, d2):
                    shutil.rmtree(d / "cp", ignore_errors=True)
                settle()
                t0 = time.perf_counter()
                both = [subprocess.Popen(["cp", "-r", str(src), str(d / "cp")]) for d in (d1, d2)]
                if any(p.wait() != 0 for p in both):
                    raise RuntimeError("cp failed")
                sh("sync", "-f", d1)
                sh("sync", "-f", d2)
                t_cp2 = time.perf_counter() - t0
                for d in (d1, d2):
                    shutil.rmtree(d / "cp", ignore_errors=True)
                for folder in ("One", "Two"):
                    reset_pool(state, [d1, d2], env)
                    t = timed(lambda folder=folder, src=src: sh(*HOMEPOOL, "import", "-q", src, f"{folder}/",
                                                                env=env))
                    if rep >= 0:
                        label = "one copy" if folder == "One" else "two copies"
                        samples.setdefault(f"{wl}: homepool import, {label}", []).append(t)
                if rep >= 0:
                    samples.setdefault(f"{wl}: cp -r", []).append(t_cp)
                    samples.setdefault(f"{wl}: cp -r + sync", []).append(t_cp_sync)
                    samples.setdefault(f"{wl}: cp -r to two drives at once + sync", []).append(t_cp2)
                print(f"rep {rep}: {wl} done", file=sys.stderr)
        result = summarize(samples, workloads)
        result["machine"] = {"kernel": platform.release(), "python": platform.python_version(),
                             "cpus": os.cpu_count()}
        result["params"] = {"reps": args.reps, "big_bytes": big, "small_files": args.small,
                            "drives": sizes, "source": "tmpfs (/dev/shm)"}
        print(table(result))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(shm, ignore_errors=True)
        subprocess.run([sys.executable, str(POOLBENCH), "drives", "down", str(work)], capture_output=True)
    return 0


def summarize(samples: dict[str, list[float]], workloads: dict[str, int]) -> dict:
    rows = {}
    for name, ts in samples.items():
        wl = name.split(":")[0]
        med = statistics.median(ts)
        rows[name] = {"median_s": med, "min_s": min(ts), "max_s": max(ts), "samples": ts,
                      "MiB_per_s": workloads[wl] / med / (1 << 20)}
    for name, row in rows.items():
        wl = name.split(":")[0]
        row["speed_vs_cp"] = rows[f"{wl}: cp -r"]["median_s"] / row["median_s"]
        row["speed_vs_cp_sync"] = rows[f"{wl}: cp -r + sync"]["median_s"] / row["median_s"]
    for wl in workloads:
        one = rows.get(f"{wl}: homepool import, one copy")
        two = rows.get(f"{wl}: homepool import, two copies")
        if one and two:
            two["time_vs_one_copy"] = two["median_s"] / one["median_s"]
        ceiling = rows.get(f"{wl}: cp -r to two drives at once + sync")
        base = rows.get(f"{wl}: cp -r + sync")
        if ceiling and base:
            ceiling["time_vs_one_copy"] = ceiling["median_s"] / base["median_s"]
    return {"rows": rows}


def table(result: dict) -> str:
    lines = ["| workload | median s [min-max] | MiB/s | speed vs cp | speed vs cp+sync | time vs 1 copy |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, r in result["rows"].items():
        t1 = f"{r['time_vs_one_copy']:.2f}x" if "time_vs_one_copy" in r else ""
        lines.append(f"| {name} | {r['median_s']:.2f} [{r['min_s']:.2f}-{r['max_s']:.2f}] | {r['MiB_per_s']:.0f} | "
                     f"{r['speed_vs_cp']:.2f}x | {r['speed_vs_cp_sync']:.2f}x | {t1} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
