"""Wall time of `python searches/<search>.py --preset smoke` (by default both_fail_scan, the README's main
command).

Runs the search in a scratch folder (its own MLflow store and Tune storage, a
new local Ray instance), prints the search's output, the measured wall time,
and how much of it was training (the `time_s` each run logged; a branch's includes its trunk's epochs).

    python benchmarks/smoke_scan.py [--search handoff] [--budget-s 300] [search flags, e.g. --population 2]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget-s", type=float, default=300.0, help="target wall time in seconds")
    p.add_argument("--search", default="both_fail_scan", help="the search script under searches/ (no .py)")
    args, search_flags = p.parse_known_args()
    name = args.search
    with tempfile.TemporaryDirectory(prefix="raycredit-bench-") as tmp:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, str(ROOT / "searches" / f"{name}.py"), "--preset", "smoke",
                               *search_flags],
                              cwd=tmp, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        train_s = None
        if proc.returncode == 0:
            from raycredit.tracking import load_runs

            runs = load_runs(f"sqlite:///{tmp}/mlflow_runs/mlflow.db", f"{name}-smoke")
            train_s = runs["metrics.time_s"].dropna()
    out = proc.stdout
    print(out[out.rfind(f"{name}: "):] if f"{name}: " in out else out[-4000:])
    if proc.returncode:
        print(proc.stderr[-4000:], file=sys.stderr)
    verdict = "within" if wall <= args.budget_s else "MISSES"
    print(f"{name} smoke: exit {proc.returncode}, {wall:.1f} s wall on {os.cpu_count()} CPU cores "
          f"({verdict} the {args.budget_s:.0f} s budget)")
    printed = len((proc.stdout + proc.stderr).splitlines())
    print(f"the search printed {printed} lines ({len(proc.stdout.splitlines())} on stdout, "
          f"{len(proc.stderr.splitlines())} on stderr)")
    if train_s is not None:
        print(f"training inside the trials: {train_s.sum():.1f} s summed over {len(train_s)} runs "
              f"(mean {train_s.mean():.2f} s, max {train_s.max():.2f} s per run)")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
