"""Both-fail scan: where do FA and DFA both fall below the frozen-blocks baseline?

Question: on which (d, L) settings do feedback alignment and direct feedback
alignment *both* score below the frozen-blocks baseline while still reporting
positive deep cosine and above-chance accuracy, in settings where BP does use
depth (the reference study found d=512 L=2 on CIFAR-10 with 3/10 seeds)?

Sweep: rules {fa, dfa} x credit_norm {on, off} x d x L x seeds, plus the controls {bp, frozen} x d x L x
seeds, all with the reference study's block-level FA (fa_mode=reference), then analysis/both_fail.py.
The credit-normalization axis shows every both-fail claim with and without the reference's per-sample
normalization; BP is each setting's control (a setting where BP does not beat frozen is invalid).

    python searches/both_fail_scan.py --preset smoke              # local Ray, synthetic data
    python searches/both_fail_scan.py --preset mnist1d            # real data where depth matters, 2 CPU cores
    python searches/both_fail_scan.py --address auto --data-dir ~/data/cifar10   # the paper scan
    python searches/both_fail_scan.py --address auto --data-dir ~/data/cifar10 --population 10
        # the same runs, each setting's 10 seeds trained together in one trial (GPU; README)

Cost: smoke is 48 trials of about 3 s of training each on the synthetic task
(docs/PERFORMANCE.md has the measured wall time); mnist1d is 108 trials of 30 MNIST-1D epochs
(docs/results/both_fail_mnist1d.md has the measured wall time); paper is 480 trials of 100
CIFAR-10 epochs (the reference study needed about 3 GPU-minutes a run).
"""

import sys

from raycredit.search import REFERENCE, Preset, run_search


def scan(d: list[int], L: list[int], seeds: list[int]) -> dict:
    """FA and DFA with and without credit normalization, and their controls, over d x L x seeds."""
    return dict(grid={"rule": ["fa", "dfa"], "credit_norm": [True, False], "d": d, "L": L, "seed": seeds},
                also=({"rule": ["bp", "frozen"], "d": d, "L": L, "seed": seeds},))


PRESETS = {
    "smoke": Preset(
        doc="synthetic alpha=1, d {64,128} x L {2,4} x seeds {0,1}, credit_norm {on,off}, 8 epochs",
        **scan([64, 128], [2, 4], [0, 1]),
        fixed={**REFERENCE, "dataset": "synthetic", "alpha": 1.0, "n_train": 4000, "n_test": 1000, "epochs": 8,
               "probe_size": 128, "rho_dirs": 8, "diag_every": 4, "checkpoint_every": 4},
    ),
    "mnist1d": Preset(
        doc="mnist1d (the package's default set), d {64,128} x L {2,4,8} x seeds 0-2, credit_norm {on,off}, "
            "30 epochs",
        **scan([64, 128], [2, 4, 8], [0, 1, 2]),
        fixed={**REFERENCE, "dataset": "mnist1d", "data_seed": 42, "epochs": 30, "batch_size": 100,
               "probe_size": 256, "rho_dirs": 8, "diag_every": 10, "checkpoint_every": 10},
    ),
    "paper": Preset(
        doc="cifar10, d {256,512} x L {2,4,8,12} x seeds 0-9, credit_norm {on,off}, 100 epochs",
        **scan([256, 512], [2, 4, 8, 12], list(range(10))),
        fixed={**REFERENCE, "dataset": "cifar10", "epochs": 100, "batch_size": 128, "lr": 1e-3, "diag_every": 5,
               "checkpoint_every": 5},
    ),
}


def main(argv: list[str] | None = None) -> int:
    return run_search("both_fail_scan", __doc__, PRESETS, default_preset="paper",
                      analysis=("analysis.both_fail:run", "analysis.plots:run"), argv=argv)


if __name__ == "__main__":
    sys.exit(main())
