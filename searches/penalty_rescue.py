"""Penalty rescue: does the block-output penalty lam * ||f_l||^2 rescue the rules whose blocks run away?

Question: the reference study found that the penalty lifts DFA by about 6 points on CIFAR-10
(30 epochs, d=256) while FA, which does not need rescuing, barely moves. Which
rules does a penalty help, and at which strength?

Sweep: penalty_lam {0, 1e-4, 1e-3, 1e-2} x rules {dfa, fa, state_bridge, credit_bridge, bp} x seeds,
then analysis/summary.py (accuracy, deep cos and rho per rule and lam).

    python searches/penalty_rescue.py --preset smoke
    python searches/penalty_rescue.py --preset mnist1d     # the same question on MNIST-1D, on 2 CPU cores
    python searches/penalty_rescue.py --address auto --data-dir ~/data/cifar10

Cost: bp, which has no penalty, trains once per seed. smoke is 9 trials (30 s on 2 CPU cores measured
when it trained bp once per lam, 10 trials, by `python -m pytest tests/test_searches.py -k smoke_preset
--durations=5` in one running local Ray instance, on a contended host); mnist1d is 51 trials of 30 epochs
(docs/results/penalty_rescue_mnist1d.md has the wall time measured with 60); paper is 51 trials of 30
CIFAR-10 epochs, not timed here (credit_bridge's value net makes it the slowest rule).
"""

import sys

from raycredit.search import MNIST1D, REFERENCE, Preset, run_search

RULES = ["dfa", "fa", "state_bridge", "credit_bridge", "bp"]

MNIST1D_FIXED = {**REFERENCE, **MNIST1D, "epochs": 30, "diag_every": 10, "checkpoint_every": 10}

PRESETS = {
    "smoke": Preset(
        doc="synthetic alpha=1, d=64 L=4, lam {0, 1e-2} x 5 rules, seed 0, 3 epochs",
        grid={"rule": RULES, "penalty_lam": [0.0, 1e-2], "seed": [0]},
        fixed={**REFERENCE,
               "dataset": "synthetic", "alpha": 1.0, "d": 64, "L": 4, "n_train": 1000, "n_test": 500,
               "epochs": 3, "probe_size": 128, "rho_dirs": 8, "diag_every": 3, "checkpoint_every": 2},
    ),
    "mnist1d": Preset(
        doc="mnist1d (the package's default set) d=128 L=4, lam {0, 1e-4, 1e-3, 1e-2} x 5 rules x seeds 0-2, "
            "30 epochs",
        grid={"rule": RULES, "penalty_lam": [0.0, 1e-4, 1e-3, 1e-2], "seed": [0, 1, 2]},
        fixed=MNIST1D_FIXED,
    ),
    "mnist1d_ends": Preset(
        doc="mnist1d's two ends of lam, {0, 1e-2} x 5 rules x seeds 0-2, 30 epochs (the study's comparison; a stage "
            "of reproduce.py)",
        grid={"rule": RULES, "penalty_lam": [0.0, 1e-2], "seed": [0, 1, 2]},
        fixed=MNIST1D_FIXED,
    ),
    "paper": Preset(
        doc="cifar10 d=256 L=4, lam {0, 1e-4, 1e-3, 1e-2} x 5 rules x seeds 0-2, 30 epochs",
        grid={"rule": RULES, "penalty_lam": [0.0, 1e-4, 1e-3, 1e-2], "seed": [0, 1, 2]},
        fixed={**REFERENCE,
               "dataset": "cifar10", "d": 256, "L": 4, "epochs": 30, "diag_every": 5, "checkpoint_every": 5},
    ),
}


def main(argv: list[str] | None = None) -> int:
    return run_search("penalty_rescue", __doc__, PRESETS, default_preset="paper",
                      analysis=("analysis.summary:run", "analysis.plots:run"), argv=argv)


if __name__ == "__main__":
    sys.exit(main())
