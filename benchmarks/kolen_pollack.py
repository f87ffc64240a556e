"""What Kolen-Pollack's own defaults buy within the anchors' budget: the W-B angle and the accuracy, against
sign symmetry (whose B = sign(W) sits at a fixed angle to W) and BP.

The anchors' budget and networks (searches/anchors.py, paper preset: digits, 30 epochs, the plain tanh MLP
d=256 L=2 and the ResMLP d=256 L=4), for bp, sign_symmetry, kolen_pollack at its defaults (raycredit/rules/
kolen_pollack.py) and kolen_pollack at the decay the rule used to ask for (adamw, weight_decay 0.1, B at
feedback_scale 1), each over `--seeds`. Prints the markdown table (mean ± sample std, ddof=1) and writes it
to `--out`.

    python benchmarks/kolen_pollack.py --out docs/results/kolen_pollack.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from raycredit.rules import make_config
from raycredit.tracking.provenance import code_version
from raycredit.train import train

NETS = {"mlp": dict(arch="mlp", d=256, L=2, activation="tanh"), "resmlp": dict(arch="resmlp", d=256, L=4)}
VARIANTS = {"bp": dict(rule="bp"), "sign_symmetry": dict(rule="sign_symmetry"),
            "kolen_pollack (defaults)": dict(rule="kolen_pollack"),
            "kolen_pollack (adamw, weight_decay 0.1, feedback_scale 1)": dict(
                rule="kolen_pollack", optimizer="adamw", weight_decay=0.1, feedback_scale=1.0)}


def cell(values: list[float], fmt: str) -> str:
    if len(values) < 2:
        return format(values[0], fmt) if values else "–"
    return f"{format(statistics.fmean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--out", default="docs/results/kolen_pollack.md")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    t0 = time.perf_counter()
    lines = ["| net | rule | seeds | test_acc | deep_cos | W-B angle (degrees) |", "|---|---|---|---|---|---|"]
    for net, arch in NETS.items():
        for name, knobs in VARIANTS.items():
            runs = [train(make_config({"dataset": "digits", "epochs": args.epochs, "diag_every": args.epochs,
                                            "probe_size": 256, "device": "cpu", "seed": s, **arch, **knobs}))["final"]
                    for s in seeds]
            angles = [r["wb_angle"] for r in runs if "wb_angle" in r]
            lines.append(f"| {net} | {name} | {len(runs)} | {cell([r['test_acc'] for r in runs], '.3f')} | "
                         f"{cell([r['deep_cos'] for r in runs], '.3f')} | {cell(angles, '.1f')} |")
            print(lines[-1], flush=True)
    wall = time.perf_counter() - t0
    text = "\n".join([
        "# Kolen-Pollack's defaults within the anchors' budget", "",
        f"`python benchmarks/kolen_pollack.py --seeds {args.seeds} --epochs {args.epochs}` (digits, {args.epochs} "
        f"epochs; {wall:.0f} s on the 2-core development machine, CPU; raycredit {code_version()}). The W-B "
        "angle is the mean over the feedback pairs (`wb_angle`, raycredit/diagnostics.py) at the last epoch; "
        "mean ± sample std (ddof=1) over seeds.", "", *lines, ""])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
