"""Synthetic depth check: does the embedded synthetic task reward depth, so that "below frozen" means something?

Question: on the default teacher-student task (raycredit.data.synthetic: 8 Gaussian inputs, a 2-layer
tanh teacher of gain 2, 10 classes), does end-to-end BP beat the frozen-blocks baseline clearly (the
check of the both-fail analysis, and the reason the defaults are what they are)? With the earlier
defaults (64 inputs, gain 1) a frozen ResMLP, in effect a linear classifier, beat BP at 30 epochs: the
teacher was nearly linear and BP overfit.

Sweep: rules {bp, frozen} x d x L x seeds at the both-fail scan's smoke budget (smoke) and at the
synthetic paper budget (paper: d=128 L=4, 10000 examples, 30 epochs), then analysis/summary.py.

    python searches/synthetic_depth.py --preset smoke
    python searches/synthetic_depth.py --preset paper

Cost: smoke is 8 trials of 8 epochs on 4000 examples; paper 6 trials of 30 epochs on 10000 examples
(docs/results/synthetic_depth.md has the measured tables and times).
"""

import sys

from raycredit.search import Preset, run_search

PRESETS = {
    "smoke": Preset(
        doc="synthetic alpha=1, bp and frozen, d {64,128} x L {2,4}, seed 0, 8 epochs on 4000 examples",
        grid={"rule": ["bp", "frozen"], "d": [64, 128], "L": [2, 4], "seed": [0]},
        fixed={"dataset": "synthetic", "alpha": 1.0, "n_train": 4000, "n_test": 1000, "epochs": 8,
               "probe_size": 128, "rho_dirs": 8, "diag_every": 8, "checkpoint_every": 8},
    ),
    "paper": Preset(
        doc="synthetic alpha=1, bp and frozen, d=128 L=4, seeds 0-2, 30 epochs on 10000 examples",
        grid={"rule": ["bp", "frozen"], "seed": [0, 1, 2]},
        fixed={"dataset": "synthetic", "alpha": 1.0, "d": 128, "L": 4, "epochs": 30, "probe_size": 128,
               "rho_dirs": 8, "diag_every": 30, "checkpoint_every": 10},
    ),
}


def main(argv: list[str] | None = None) -> int:
    return run_search("synthetic_depth", __doc__, PRESETS, default_preset="smoke", analysis="analysis.summary:run",
                      argv=argv)


if __name__ == "__main__":
    sys.exit(main())
