"""Both-fail scan: where do FA and DFA both fall below the frozen-blocks baseline?

Question: on which (d, L) settings do feedback alignment and direct feedback
alignment *both* score below the frozen-blocks baseline while still reporting
positive deep cosine and above-chance accuracy (SPEC §7-8; the seeds found
d=512 L=2 on CIFAR-10 with 3/10 seeds)?

Sweep: rules {bp, fa, dfa, frozen} x d x L x seeds, then analysis/both_fail.py.

    python searches/both_fail_scan.py --preset smoke              # local Ray, synthetic data
    python searches/both_fail_scan.py --address auto --data-dir ~/data/cifar10   # the paper scan
    python searches/both_fail_scan.py --address auto --data-dir ~/data/cifar10 --population 10
        # the same runs, each setting's 10 seeds trained together in one trial (GPU; README)

Cost: smoke is 32 trials of about 3 s of training each on the synthetic task,
75-184 s in all on 2 CPU cores depending on the host's load
(docs/PERFORMANCE.md); paper is 320 trials of 100 CIFAR-10 epochs (the reference
study needed about 3 GPU-minutes a run).
"""

import sys

from analysis import both_fail, plots
from raycredit.search import Preset, run_search

RULES = ["bp", "fa", "dfa", "frozen"]

PRESETS = {
    "smoke": Preset(
        doc="synthetic alpha=1, d {64,128} x L {2,4} x seeds {0,1}, 8 epochs",
        grid={"rule": RULES, "d": [64, 128], "L": [2, 4], "seed": [0, 1]},
        fixed={"dataset": "synthetic", "alpha": 1.0, "n_train": 4000, "n_test": 1000, "epochs": 8,
               "probe_size": 128, "rho_dirs": 8, "diag_every": 4, "checkpoint_every": 4},
    ),
    "paper": Preset(
        doc="cifar10, d {256,512} x L {2,4,8,12} x seeds 0-9, 100 epochs",
        grid={"rule": RULES, "d": [256, 512], "L": [2, 4, 8, 12], "seed": list(range(10))},
        fixed={"dataset": "cifar10", "epochs": 100, "batch_size": 128, "lr": 1e-3, "diag_every": 5,
               "checkpoint_every": 5},
    ),
}


def main(argv: list[str] | None = None) -> int:
    return run_search("both_fail_scan", __doc__, PRESETS, default_preset="paper",
                      analysis=(both_fail.run, plots.run), argv=argv)


if __name__ == "__main__":
    sys.exit(main())
