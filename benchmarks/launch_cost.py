"""CPU time of one search launch, by process: what a driver test of the suite costs, and what every sweep
pays before it trains.

Runs the test suite's small sweep (the smoke scan shrunk to 4 trials of 6 epochs on 500 examples, one trial
at a time) in a scratch folder, samples the driver's process tree (psutil, every 0.3 s) and prints the
CPU seconds (user + system, as last sampled) per kind of process: the driver, the trial's Ray worker, the
heartbeat actor's, Ray's own daemons; and the seconds that the trials' epochs took (their time_s).

    python benchmarks/launch_cost.py
    python benchmarks/launch_cost.py --at-once 2    # as the test suite's two workers may run them
"""

import argparse
import collections
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("searches/", "ray::ImplicitFu", "Heartbeats", "gcs_server", "raylet", "dashboard.py", "DashboardAgent",
         "RuntimeEnvAgent", "log_monitor", "autoscaler", "ray::IDLE")


def kind(cmdline: list[str]) -> str:
    line = " ".join(cmdline)
    return next((k for k in KINDS if k in line), line[:60])


def training_seconds(uri: str) -> float:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("launch").experiment_id])
    # time_s counts from a run's start (a resumed run's goes on), so its last value is the run's
    return sum(max(m.value for m in client.get_metric_history(r.info.run_id, "time_s")) for r in runs)


def launch(folder: Path) -> subprocess.Popen:
    cmd = [sys.executable, str(ROOT / "searches" / "both_fail_scan.py"), "--preset", "smoke", "--seeds", "0",
           "--set", "credit_norm=true", "--set", "d=16", "--set", "L=2", "--set", "n_train=500",
           "--epochs", "6", "--tracking-uri", f"sqlite:///{folder}/mlflow.db", "--storage", f"{folder}/ray",
           "--experiment", "launch", "--gpus-per-trial", "0", "--cpus-per-trial", "2", "--no-analysis"]
    folder.mkdir()
    return subprocess.Popen(cmd, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def sample(procs: list[subprocess.Popen]) -> dict[int, tuple[str, float]]:
    """{pid: (kind, CPU seconds as last sampled)} over the launches' process trees until they end."""
    seen = {}
    while any(p.poll() is None for p in procs):
        for proc in procs:
            try:
                tree = [psutil.Process(proc.pid)]
                tree += tree[0].children(recursive=True)  # Ray's daemons, and its workers under raylet
            except psutil.Error:  # the driver has just ended
                continue
            for p in tree:
                try:
                    cpu = p.cpu_times()
                    seen[p.pid] = (kind(p.cmdline() or ["(ended before its command line was read)"]),
                                   cpu.user + cpu.system)
                except psutil.Error:  # it ended between the listing and the reading
                    pass
        time.sleep(0.3)
    return seen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--at-once", type=int, default=1,
                        help="launches started together (the test suite's workers run that many at a time)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="raycredit-bench-") as tmp:
        t0 = time.time()
        procs = [launch(Path(tmp) / f"launch{n}") for n in range(args.at_once)]
        seen = sample(procs)
        wall = time.time() - t0
        for proc in procs:
            err = proc.stderr.read()
            proc.stderr.close()
            if proc.returncode:
                print(err[-3000:], file=sys.stderr)
                return 1
        trained = [training_seconds(f"sqlite:///{tmp}/launch{n}/mlflow.db") for n in range(args.at_once)]
    total, count = collections.Counter(), collections.Counter()
    for k, cpu in seen.values():
        total[k] += cpu
        count[k] += 1
    print("| process | count | CPU s |\n|---|---|---|")
    for k, cpu in total.most_common():
        print(f"| {k} | {count[k]} | {cpu:.1f} |")
    print(f"\n{sum(total.values()):.1f} CPU s in {wall:.1f} s wall for {args.at_once} launch(es) at once, of which the "
          f"trials logged {' + '.join(f'{t:.1f}' for t in trained)} s of epochs (training, evaluation and "
          "diagnostics: their time_s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
