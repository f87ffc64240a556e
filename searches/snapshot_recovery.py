"""Credit recovery on a frozen snapshot (the reference study's phases 4A and 5B): can a credit estimator recover the
gradient's direction when the network it estimates for stands still?

Question: online, learned credit estimators lose to DFA; is that the estimator, or the co-adaptation of
estimator and network? The seeds froze a BP-trained CIFAR-10 network (L=4 d=256, 61.7%) and fitted each
estimator on its fixed representations: DFA (the null) 0.006 Gamma, scalar credit bridge 0.115 (eT) and 0.070
(deltaL), state bridge 0.287, and the vector field 0.364 (rho 0.426): estimators can recover credit, so the
online failure is co-adaptation.

Sweep: a bp trunk per seed (and, in the paper preset, per (d, L) of 4A), then branches from its last epoch
with freeze_model (only the estimator learns; the model's weights never change) for `fit` epochs with
diagnostics every epoch: dfa, state_bridge, credit_bridge (eT, deltaL) and vector_field (M=4), the learned
ones without DFA warm-up. Then analysis/lineage.py recovery: final deep_cos (Gamma), deep_rho, nudge.

    python searches/snapshot_recovery.py --preset smoke
    python searches/snapshot_recovery.py --preset mnist1d   # MNIST-1D, 2 CPU cores
    python searches/snapshot_recovery.py --address auto --data-dir ~/data/cifar10

Cost: mnist1d is 18 trials, 3.0 min on 2 CPU cores as a stage of reproduce.py --preset mnist1d
(docs/results/reproduction_mnist1d.md); smoke is 2 trunks of 6 epochs and 10 fits of 6 epochs on synthetic data
(docs/PERFORMANCE.md); paper is 9 trunks of 100 CIFAR-10 epochs and 45 fits of 100 epochs, not timed here."""

import sys

from raycredit.search import MNIST1D, Branch, Preset, run_search

ESTIMATORS = [{"rule": "dfa"}, {"rule": "state_bridge"}, {"rule": "credit_bridge", "s_type": "eT"},
              {"rule": "credit_bridge", "s_type": "deltaL"}, {"rule": "vector_field", "s_type": "eT", "vf_dirs": 4}]


def fits(epochs: int) -> tuple[Branch, ...]:
    """Every estimator fitted for `epochs` epochs on each trunk's last checkpoint, the model frozen."""
    fit = {"freeze_model": True, "warmup_ratio": 0.0, "diag_every": 1, "epochs": lambda c: c["parent_epoch"] + epochs}
    return tuple(Branch(of={"parent_run": [""]}, fixed={**knobs, **fit}) for knobs in ESTIMATORS)


PRESETS = {
    "smoke": Preset(
        doc="synthetic alpha=1 d=64 L=4: bp 6 epochs, seeds {0,1}; 5 estimators fitted 6 epochs on the frozen net",
        grid={"rule": ["bp"], "seed": [0, 1]},
        fixed={"dataset": "synthetic", "alpha": 1.0, "d": 64, "L": 4, "n_train": 2000, "n_test": 500, "epochs": 6,
               "probe_size": 128, "rho_dirs": 8, "diag_every": 6, "checkpoint_every": 6},
        branches=fits(6),
    ),
    "mnist1d": Preset(
        doc="mnist1d d=128 L=4: bp 30 epochs, seeds 0-2; 5 estimators fitted 10 epochs on the frozen net",
        grid={"rule": ["bp"], "seed": [0, 1, 2]},
        fixed={**MNIST1D, "epochs": 30, "diag_every": 10, "checkpoint_every": 10},
        branches=fits(10),
    ),
    "paper": Preset(
        doc="cifar10, bp 100 epochs at (d, L) in {(256, 4), (256, 6), (512, 4)}, seeds 0-2; 5 estimators fitted "
            "100 epochs on the frozen net",
        grid={"rule": ["bp"], "d": [256], "L": [4, 6], "seed": [0, 1, 2]},
        also=({"rule": ["bp"], "d": [512], "L": [4], "seed": [0, 1, 2]},),
        fixed={"dataset": "cifar10", "epochs": 100, "diag_every": 10, "checkpoint_every": 10},
        branches=fits(100),
    ),
}


def main(argv: list[str] | None = None) -> int:
    return run_search("snapshot_recovery", __doc__, PRESETS, default_preset="paper",
                      analysis="analysis.lineage:report_recovery", argv=argv)


if __name__ == "__main__":
    sys.exit(main())
