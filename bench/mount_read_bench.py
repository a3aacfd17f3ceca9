#!/usr/bin/env python3
"""Benchmark: reading through the (read-only, first-slice) homepool mount, against the bare
drive and mergerfs over the same drives, in one interleaved run.

The mount cannot be written through yet, so poolbench's suite (which writes its own files)
cannot run on it; this measures poolbench's read rows with the same fio settings: a 1 GiB file
imported into a 1-copy folder, then on every target sequential read 1 MiB cold (page cache
dropped) and warm, and 4 KiB random read warm (QD1, time-based). The bare target reads the very
file the pool placed on its drive; mergerfs (poolbench's recommended options, cache.files=off)
and the homepool mount read it through their own paths.

Usage (root): python bench/mount_read_bench.py [--reps 5] [--size 1G] [--json OUT]
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
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
POOLBENCH = Path(os.environ.get("POOLBENCH", REPO.parent / "shared" / "bench" / "poolbench"))
HOMEPOOL = [sys.executable, "-m", "homepool"]


def sh(*args: str | Path, env: dict[str, str] | None = None) -> str:
    return subprocess.run([str(a) for a in args], check=True, env=env, capture_output=True, text=True).stdout


def drop_caches() -> None:
    sh("sync")
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def fio(path: Path, rw: str, bs: str, size: int, runtime: int | None = None) -> float:
    cmd = ["fio", "--name=mr", f"--filename={path}", f"--rw={rw}", f"--bs={bs}", f"--size={size}",
           "--ioengine=psync", "--iodepth=1", "--direct=0", "--fallocate=none", "--invalidate=0",
           "--randrepeat=1", "--norandommap", "--numjobs=1", "--readonly", "--output-format=json"]
    if runtime:
        cmd += ["--time_based", f"--runtime={runtime}"]
    job = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)["jobs"][0]
    read = job["read"]
    return float(read["iops"] if rw == "randread" else read["bw_bytes"] / (1 << 20))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--size", default="1G")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp/homepool-mount-read-bench"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("mount_read_bench: needs root (loop-mounted drives, FUSE)")
    size = int(args.size[:-1]) << {"M": 20, "G": 30}[args.size[-1].upper()]
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    drives = [Path(p) for p in sh(sys.executable, POOLBENCH, "drives", "up", work, "--sizes", "3G,3G,3G").split()]
    state, mnt, mfs = work / "state", work / "homepool", work / "mergerfs"
    shutil.rmtree(state, ignore_errors=True)  # a fresh pool every run
    env = {**os.environ, "HOMEPOOL_POOL": str(state)}
    src = Path("/dev/shm/homepool-mount-read-bench")
    samples: dict[str, list[float]] = {}
    try:
        sh(*HOMEPOOL, "init", env=env)
        for d in drives:
            sh(*HOMEPOOL, "drive", "add", d, env=env)
        sh(*HOMEPOOL, "folder", "add", "Bench", "--copies", "1", env=env)
        src.mkdir(exist_ok=True)
        with open(src / "big.bin", "wb") as f:
            block = os.urandom(1 << 20)
            for _ in range(size >> 20):
                f.write(block)
        sh(*HOMEPOOL, "import", "-q", src / "big.bin", "Bench/", env=env)
        (src / "big.bin").unlink()
        bare = next(d / "HomePool/Bench/big.bin" for d in drives if (d / "HomePool/Bench/big.bin").exists())
        sh(sys.executable, POOLBENCH, "mergerfs", "up", work, mfs)
        mnt.mkdir(exist_ok=True)
        sh(*HOMEPOOL, "mount", mnt, env=env)
        targets = {"bare drive": bare, "mergerfs": mfs / "HomePool/Bench/big.bin", "homepool": mnt / "Bench/big.bin"}
        for rep in range(-1, args.reps):  # rep -1: untimed warm-up
            for name, path in targets.items():
                drop_caches()
                row = {"seq read 1M, cold (MiB/s)": fio(path, "read", "1M", size)}
                row["seq read 1M, warm (MiB/s)"] = fio(path, "read", "1M", size)
                row["rand read 4k, warm (IOPS)"] = fio(path, "randread", "4k", size, runtime=5)
                if rep >= 0:
                    for metric, value in row.items():
                        samples.setdefault(f"{metric}|{name}", []).append(value)
            print(f"rep {rep} done", file=sys.stderr)
    finally:
        subprocess.run([*HOMEPOOL, "unmount", str(mnt)], env=env, capture_output=True)
        subprocess.run([sys.executable, str(POOLBENCH), "mergerfs", "down", str(mfs)], capture_output=True)
        subprocess.run([sys.executable, str(POOLBENCH), "drives", "down", str(work)], capture_output=True)
        (src / "big.bin").unlink(missing_ok=True)
        shutil.rmtree(state, ignore_errors=True)
    metrics = sorted({k.split("|")[0] for k in samples}, key=lambda m: list(samples).index(f"{m}|bare drive"))
    lines = ["| workload | bare drive | mergerfs | homepool (read-only mount) | homepool vs bare | vs mergerfs |",
             "|---|---:|---:|---:|---:|---:|"]
    result: dict = {"rows": {}, "machine": {"kernel": platform.release(), "python": platform.python_version()},
                    "params": {"reps": args.reps, "size": size}}
    for m in metrics:
        med = {t: statistics.median(samples[f"{m}|{t}"]) for t in ("bare drive", "mergerfs", "homepool")}
        spread = {t: (min(samples[f"{m}|{t}"]), max(samples[f"{m}|{t}"])) for t in med}
        result["rows"][m] = {"median": med, "spread": spread}
        lines.append(f"| {m} | {med['bare drive']:,.0f} | {med['mergerfs']:,.0f} | {med['homepool']:,.0f} | "
                     f"{med['homepool'] / med['bare drive']:.2f}x | {med['homepool'] / med['mergerfs']:.2f}x |")
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
