"""What one diagnostics call costs against one training epoch, measured side by side in one process.

At the defaults (synthetic, ResMLP d=256 L=4, 10k training samples, probe 256, 32 rho directions), for bp,
fa and dfa after `--warm` epochs of training: the wall time of one training epoch and of one `diagnose()`
call (medians over `--repeat`), for

- the defaults (diag_dtype float64, 2 of the 32 rho directions measured by forward passes);
- every rho direction measured in float64 (rho_measured = rho_dirs): the full finite-difference measurement;
- diag_dtype float32, the opt-in, with its float64 check (it may fall back to float64: the last column);

and the largest |rho/l{i}| difference between the defaults and that full float64 measurement, and between
float32 and float64 on the same directions (their documented tolerance is 0.01).

    python benchmarks/diagnostics.py                  # the defaults, torch's own thread count
    python benchmarks/diagnostics.py --threads 1      # single-threaded

Prints a markdown table headed by the hardware, and writes it with the raw figures to --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raycredit.data import load_data  # noqa: E402
from raycredit.diagnostics import diagnose  # noqa: E402
from raycredit.rules import make_config
from raycredit.train import EagerStepper, resolve_device  # noqa: E402

TARGET = 0.15  # issue #16: one diagnostics call at most 15% of one training epoch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeat: int) -> tuple[float, object]:
    """(median wall seconds over `repeat` calls, the last call's result)."""
    times, out = [], None
    for _ in range(repeat):
        sync(device)
        t = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def bench_rule(rule: str, args, device: torch.device) -> dict:
    cfg = make_config({"rule": rule, "device": str(device)})
    data = load_data(cfg.data, device)
    st = EagerStepper(cfg, data, device)
    px, py = data.x_test[: cfg.diag.probe_size], data.y_test[: cfg.diag.probe_size]
    bs = cfg.train.batch_size

    def epoch():
        perm = st.start_epoch(1, cfg.train.epochs)
        for s in range(0, st.n, bs):
            st.step(perm[:, s:s + bs])
        st.end_epoch()

    for _ in range(args.warm):
        epoch()
    epoch_s, _ = timed(epoch, device, args.repeat)

    def diag(**over):
        return lambda: diagnose(st.model, st.rule, px, py, cfg.replace(**over).diag, seed=11, h_norm_init=1.0)

    diag(**{})()  # first call: allocations, lazy init
    default_s, default = timed(diag(), device, args.repeat)
    full_s, full = timed(diag(rho_measured=cfg.diag.rho_dirs, diag_dtype="float64"), device, args.repeat)
    f32_s, f32 = timed(diag(diag_dtype="float32"), device, args.repeat)
    f64 = default
    layers = range(cfg.model.L + 1)
    return {
        "rule": rule, "epoch_s": epoch_s, "diag_s": default_s, "full_float64_s": full_s,
        "float32_s": f32_s, "ratio": default_s / epoch_s, "full_ratio": full_s / epoch_s,
        "float32_ratio": f32_s / epoch_s,
        "defaults_in_float64": default["diag_float64"],
        "max_rho_diff_vs_full": max(abs(default[f"rho/l{i}"] - full[f"rho/l{i}"]) for i in layers),
        "max_rho_diff_f32_f64": max(abs(f32[f"rho/l{i}"] - f64[f"rho/l{i}"]) for i in layers),
        "float32_fell_back": f32["diag_float64"],
        "deep_rho": default["deep_rho"], "deep_rho_full": full["deep_rho"],
    }


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--rules", default="bp,fa,dfa")
    ap.add_argument("--warm", type=int, default=1, help="training epochs before measuring (a trained model)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", default="benchmarks/results/diagnostics.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    rows = [bench_rule(rule, args, device) for rule in args.rules.split(",")]
    lines = [f"Hardware: {hardware(device)}; torch {torch.__version__}", "",
             "| rule | epoch | diagnostics (defaults) | ratio | full float64 rho | ratio | max abs(Δrho) defaults "
             "vs full | float32 opt-in | ratio | max abs(Δrho) float32 vs float64 | float32 opt-in ran in |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['rule']} | {r['epoch_s']:.3f} s | {r['diag_s']:.3f} s | {r['ratio']:.3f} | "
                     f"{r['full_float64_s']:.3f} s | {r['full_ratio']:.3f} | {r['max_rho_diff_vs_full']:.4f} | "
                     f"{r['float32_s']:.3f} s | {r['float32_ratio']:.3f} | {r['max_rho_diff_f32_f64']:.4f} | "
                     f"{'float64 (fell back)' if r['float32_fell_back'] else 'float32'} |")
    worst = max(r["ratio"] for r in rows)
    lines += ["", f"Largest diagnostics/epoch ratio at the defaults: {worst:.3f} (target <= {TARGET}: "
                  f"{'met' if worst <= TARGET else 'MISSED'})."]
    print("\n".join(lines))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"hardware": hardware(device), "torch": torch.__version__, "rows": rows,
                               "table": lines}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
