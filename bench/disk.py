"""The demo search's run folder on disk, sampled every second: its peak against its final size, with the
checkpoints of trials no one needs deleted as the search goes (--keep-checkpoints best, the default) and with
every checkpoint kept (--keep-checkpoints all), side by side in one run.

    python bench/disk.py [--work DIR] [--interval 1.0]

Runs `tuner search --space demo` (the quickstart: 12 trials, 2 at a time, ASHA) once with each setting, on the
same demo data and sampler seed; for each prints the run folder's peak and final size and their ratio, and
what the largest files were at the peak. Takes about 7 minutes on 2 idle CPU cores.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line  # noqa: E402

MIB = 2**20


def folder_files(folder: Path) -> dict[str, int]:
    """Every file under `folder` with its size; files deleted while walking are left out."""
    sizes = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            try:
                sizes[os.path.relpath(path, folder)] = os.path.getsize(path)
            except OSError:
                pass
    return sizes


def sampled_search(work: Path, keep: str, interval: float) -> dict:
    """Run the demo search with --keep-checkpoints `keep`, sampling its run folder every `interval` s."""
    run = work / "runs" / f"keep-{keep}"
    command = [sys.executable, "-m", "tuner", "search", "--space", "demo", "--storage", str(work / "runs"),
               "--name", run.name, "--keep-checkpoints", keep]
    with open(work / f"keep-{keep}.log", "w") as log:
        process = subprocess.Popen(command, cwd=work, stdout=log, stderr=subprocess.STDOUT)
        peak, at_peak, samples, started = 0, {}, 0, time.time()
        while process.poll() is None:
            sizes = folder_files(run)
            samples += 1
            if sum(sizes.values()) > peak:
                peak, at_peak = sum(sizes.values()), sizes
            time.sleep(interval)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {process.returncode}; see {work / f'keep-{keep}.log'}")
    final = sum(folder_files(run).values())
    return {"keep": keep, "peak": peak, "final": final, "samples": samples, "seconds": time.time() - started,
            "largest": sorted(((size, name) for name, size in at_peak.items() if size >= MIB), reverse=True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=None, help="folder for the runs (default: a temporary one)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples (default: 1.0)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="tuner-disk-"))
    work.mkdir(parents=True, exist_ok=True)
    print(machine_line())
    results = [sampled_search(work, keep, args.interval) for keep in ("best", "all")]
    for r in results:
        print(f"--keep-checkpoints {r['keep']}: peak {r['peak'] / MIB:,.0f} MiB, final {r['final'] / MIB:,.0f} MiB, "
              f"peak/final {r['peak'] / r['final']:.2f} ({r['samples']} samples over {r['seconds']:.0f} s)")
        for size, name in r["largest"]:
            print(f"    at the peak: {size / MIB:7.1f} MiB  {name}")
    best, every = results
    print(f"peak with best / peak with all: {best['peak'] / every['peak']:.2f}")


if __name__ == "__main__":
    main()
