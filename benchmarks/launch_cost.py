"""CPU time of one search launch, by process: what a driver test of the suite costs, and what every sweep
pays before it trains.

Runs the test suite's small sweep (the smoke scan shrunk to 4 trials of 6 epochs on 500 examples, one trial
at a time) in a scratch folder, samples the driver's process tree (psutil, every 0.3 s) and prints the
CPU seconds (user + system, as last sampled) per kind of process: the driver, the trial's Ray worker, the
heartbeat actor's, Ray's own daemons; and the seconds that the trials' epochs took (their time_s).

    python benchmarks/launch_cost.py
"""

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


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="raycredit-bench-") as tmp:
        cmd = [sys.executable, str(ROOT / "searches" / "both_fail_scan.py"), "--preset", "smoke", "--seeds", "0",
               "--set", "credit_norm=true", "--set", "d=16", "--set", "L=2", "--set", "n_train=500",
               "--epochs", "6", "--tracking-uri", f"sqlite:///{tmp}/mlflow.db", "--storage", f"{tmp}/ray",
               "--experiment", "launch", "--gpus-per-trial", "0", "--cpus-per-trial", "2", "--no-analysis"]
        t0 = time.time()
        proc = subprocess.Popen(cmd, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        driver, seen = psutil.Process(proc.pid), {}
        while proc.poll() is None:
            try:
                tree = [driver, *driver.children(recursive=True)]  # Ray's daemons, and its workers under raylet
            except psutil.Error:  # the driver has just ended
                break
            for p in tree:
                try:
                    cpu = p.cpu_times()
                    seen[p.pid] = (kind(p.cmdline() or ["(ended before its command line was read)"]),
                                   cpu.user + cpu.system)
                except psutil.Error:  # it ended between the listing and the reading
                    pass
            time.sleep(0.3)
        wall = time.time() - t0
        err = proc.stderr.read()
        proc.stderr.close()
        if proc.returncode:
            print(err[-3000:], file=sys.stderr)
            return 1
        trained = training_seconds(f"sqlite:///{tmp}/mlflow.db")
    total, count = collections.Counter(), collections.Counter()
    for k, cpu in seen.values():
        total[k] += cpu
        count[k] += 1
    print("| process | count | CPU s |\n|---|---|---|")
    for k, cpu in total.most_common():
        print(f"| {k} | {count[k]} | {cpu:.1f} |")
    print(f"\n{sum(total.values()):.1f} CPU s in {wall:.1f} s wall, of which the trials logged {trained:.1f} s of "
          "epochs (training, evaluation and diagnostics: their time_s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
