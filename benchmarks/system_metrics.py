"""What MLflow's system metrics cost a trial: training epochs with the monitor sampling at `--intervals` seconds
against none, in one process, logging into a scratch SQLite store as a trial does.

At the defaults (synthetic, ResMLP d=256 L=4, 10k training samples, bp), `--epochs` epochs per measurement,
the settings interleaved `--repeat` times: the median time per epoch of each setting, its ratio to no
monitor, and how many system/* points the run got.

    python benchmarks/system_metrics.py [--intervals 1,10] [--epochs 12] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # the monitor's start/stop INFO lines

from raycredit import tracking  # noqa: E402
from raycredit.config import Config  # noqa: E402
from raycredit.rules import make_config
from raycredit.train import train  # noqa: E402


def measure(uri: str, exp: str, cfg: Config, interval: float, n: int) -> tuple[float, int]:
    """(seconds per epoch, system/* points logged) of one training run with the monitor at `interval` (0: off)."""
    from mlflow.tracking import MlflowClient

    run = tracking.TrialRun(uri, exp, f"{cfg.key()}-{interval}-{n}", run_name=f"every {interval} s", params={},
                            tags={})
    if interval > 0:
        run.monitor_system(interval)
    t0 = time.perf_counter()
    train(cfg, on_epoch=lambda epoch, metrics, checkpoint_fn: run.log_epoch(epoch, metrics))
    per_epoch = (time.perf_counter() - t0) / cfg.train.epochs
    run.finish()
    points = sum(len(MlflowClient(uri).get_metric_history(run.run_id, k)) for k in
                 MlflowClient(uri).get_run(run.run_id).data.metrics if k.startswith("system/"))
    return per_epoch, points


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--intervals", default="1,10", help="sampling intervals in seconds, comma-separated")
    p.add_argument("--epochs", type=int, default=12, help="per measurement; enough for a few 10 s samples")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    intervals = [0.0] + [float(x) for x in args.intervals.split(",")]
    cfg = make_config({"rule": "bp", "dataset": "synthetic", "epochs": args.epochs, "diag_every": args.epochs,
                            "device": "cpu"})
    times: dict[float, list[float]] = {i: [] for i in intervals}
    points: dict[float, list[int]] = {i: [] for i in intervals}
    with tempfile.TemporaryDirectory(prefix="raycredit-sysmetrics-") as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        exp = tracking.ensure_experiment(uri, "system-metrics")
        for n in range(args.repeat):
            for interval in intervals:
                t, k = measure(uri, exp, cfg, interval, n)
                times[interval].append(t)
                points[interval].append(k)
    base = statistics.median(times[0.0])
    print(f"system metrics on {os.cpu_count()} CPU cores, bp d=256 L=4 synthetic 10k, {args.epochs} epochs x "
          f"{args.repeat} interleaved repeats")
    print("| sampling interval | median s per epoch | ratio to none | system/* points per run |")
    print("|---|---|---|---|")
    for interval in intervals:
        med = statistics.median(times[interval])
        label = "none" if interval == 0 else f"{interval:g} s"
        print(f"| {label} | {med:.3f} | {med / base:.3f} | {statistics.median(points[interval]):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
