"""The 6-method audit: accuracy, credit quality and Mode-1 flags of bp, fa, ep, dfa, credit_bridge,
state_bridge and the frozen-blocks baseline on one architecture.

Question: on CIFAR-10 with a d=256 L=4 ResMLP, which rules beat the
frozen-blocks baseline, which have genuine credit (deep cos), and which show
residual-stream growth / gradient-floor collapse (mode1a / mode1b)? The reference study's
Table 1: BP 0.615, FA 0.401, frozen 0.349, EP 0.316, DFA 0.306, CB 0.289, SB 0.205.

Sweep: 7 rules x seeds, then analysis/audit_table.py (per rule: accuracy, deep cos, ||h_L||, ||g_L||,
Mode 1 flags, margin to the frozen baseline).

    python searches/audit.py --preset smoke
    python searches/audit.py --preset mnist1d     # the same question on MNIST-1D, on 2 CPU cores
    python searches/audit.py --address auto --data-dir ~/data/cifar10
    python searches/audit.py --address auto --data-dir ~/data/cifar10 --set arch=small_cnn --set d=64 \\
        --set rule=bp   # the cross-architecture rows, one supported rule at a time

Cost: smoke is 7 trials; with `--seeds 0,1` (14 trials) it took 64 s on 2 CPU cores, measured by
`python -m pytest tests/test_searches.py -k audit_smoke --durations=3` in one local Ray instance while
the full test suite ran beside it; mnist1d is 21 trials of 30 epochs (docs/results/audit_mnist1d.md has
the measured wall time); paper is 21 trials of 100 CIFAR-10 epochs, not
timed here (EP's relaxation adds about ep_steps forward/backward passes a step).
"""

import sys

from raycredit.search import REFERENCE, Preset, run_search

RULES = ["bp", "fa", "ep", "dfa", "credit_bridge", "state_bridge", "frozen"]

PRESETS = {
    "smoke": Preset(
        doc="synthetic alpha=1 d=64 L=4, 7 rules, seed 0, 3 epochs",
        grid={"rule": RULES, "seed": [0]},
        fixed={**REFERENCE,
               "dataset": "synthetic", "alpha": 1.0, "d": 64, "L": 4, "n_train": 1000, "n_test": 500,
               "epochs": 3, "ep_steps": 5, "probe_size": 128, "rho_dirs": 8, "diag_every": 3,
               "checkpoint_every": 2},
    ),
    "mnist1d": Preset(
        doc="mnist1d (the package's default set) d=128 L=4, 7 rules x seeds 0-2, 30 epochs",
        grid={"rule": RULES, "seed": [0, 1, 2]},
        fixed={**REFERENCE,
               "dataset": "mnist1d", "data_seed": 42, "d": 128, "L": 4, "epochs": 30, "batch_size": 100,
               "probe_size": 256, "rho_dirs": 8, "diag_every": 10, "checkpoint_every": 10},
    ),
    "paper": Preset(
        doc="cifar10 d=256 L=4, 7 rules x seeds 0-2, 100 epochs",
        grid={"rule": RULES, "seed": [0, 1, 2]},
        fixed={**REFERENCE,
               "dataset": "cifar10", "d": 256, "L": 4, "epochs": 100, "diag_every": 5, "checkpoint_every": 5},
    ),
}


def main(argv: list[str] | None = None) -> int:
    return run_search("audit", __doc__, PRESETS, default_preset="paper",
                      analysis=("analysis.audit_table:run", "analysis.plots:run"), argv=argv)


if __name__ == "__main__":
    sys.exit(main())
