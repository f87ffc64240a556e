"""Credit-bridge boundary ablation: DFA warm-up ratio x terminal-gradient weight x conditioning code.

Question: on the synthetic task where credit_bridge is strongest (alpha=1, L=4),
how do the three knobs of its training trade credit quality (deep cos, rho)
against accuracy? The seeds found tgw=0 loses the gradient (Gamma 0.12 vs 0.46
at tgw=1), a longer warm-up buys accuracy at the price of Gamma, and codes
that append h_L let the value net cheat (Gamma near 0).

Sweep: warmup_ratio {0, 0.05, 0.2, 0.5} x tgw {0, 0.25, 1, 4} x s_type {eT, deltaL, eT_hL, deltaL_hL}
x seeds, credit_bridge only, then analysis/summary.py.

    python searches/warmup_tgw_ablation.py --preset smoke
    python searches/warmup_tgw_ablation.py --preset cpu   # 3 seeds, 2 CPU cores
    python searches/warmup_tgw_ablation.py --address auto --gpus-per-trial 0.125

Cost: cpu is 39 trials of 20 epochs on 4000 examples; smoke is 8 trials, 30 s on 2 CPU cores (measured by `python
-m pytest tests/test_searches.py -k smoke_preset --durations=5` in one running local Ray instance, on a contended
host); paper is 192 trials of 80 synthetic epochs at d=128, not timed here."""

import sys

from raycredit.search import REFERENCE, Preset, run_search

PRESETS = {
    "smoke": Preset(
        doc="synthetic alpha=1 d=64 L=4, warmup {0, 0.5} x tgw {0, 1} x s_type {eT, deltaL}, seed 0, 3 epochs",
        grid={"warmup_ratio": [0.0, 0.5], "tgw": [0.0, 1.0], "s_type": ["eT", "deltaL"], "seed": [0]},
        fixed={**REFERENCE,
               "rule": "credit_bridge", "dataset": "synthetic", "alpha": 1.0, "d": 64, "L": 4, "n_train": 1000,
               "n_test": 500, "epochs": 3, "probe_size": 128, "rho_dirs": 8, "diag_every": 3, "checkpoint_every": 2},
    ),
    "cpu": Preset(
        doc="the paper's three one-knob slices through (eT, tgw 1, warmup 0.2): the 4 codes, tgw {0,.25,1,4}, warmup "
            "{0,.05,.2,.5} for eT and deltaL; d=128, seeds 0-2, 20 epochs on 4000 examples",
        grid={"s_type": ["eT", "deltaL", "eT_hL", "deltaL_hL"], "tgw": [1.0], "warmup_ratio": [0.2],
              "seed": [0, 1, 2]},
        also=({"s_type": ["eT"], "tgw": [0.0, 0.25, 4.0], "warmup_ratio": [0.2], "seed": [0, 1, 2]},
              {"s_type": ["eT", "deltaL"], "tgw": [1.0], "warmup_ratio": [0.0, 0.05, 0.5], "seed": [0, 1, 2]}),
        fixed={**REFERENCE,
               "rule": "credit_bridge", "dataset": "synthetic", "alpha": 1.0, "d": 128, "L": 4, "n_train": 4000,
               "n_test": 1000, "epochs": 20, "diag_every": 10, "checkpoint_every": 10},
    ),
    "paper": Preset(
        doc="synthetic alpha=1 d=128 L=4, warmup {0,.05,.2,.5} x tgw {0,.25,1,4} x 4 codes x seeds 0-2, 80 epochs",
        grid={"warmup_ratio": [0.0, 0.05, 0.2, 0.5], "tgw": [0.0, 0.25, 1.0, 4.0],
              "s_type": ["eT", "deltaL", "eT_hL", "deltaL_hL"], "seed": [0, 1, 2]},
        fixed={**REFERENCE,
               "rule": "credit_bridge", "dataset": "synthetic", "alpha": 1.0, "d": 128, "L": 4, "epochs": 80,
               "diag_every": 10, "checkpoint_every": 10},
    ),
}


def main(argv: list[str] | None = None) -> int:
    return run_search("warmup_tgw_ablation", __doc__, PRESETS, default_preset="paper",
                      analysis=("analysis.summary:run", "analysis.plots:run"), argv=argv)


if __name__ == "__main__":
    sys.exit(main())
