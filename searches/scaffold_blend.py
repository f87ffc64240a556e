"""Scaffold blend: which auxiliaries improve DFA when blended in, and at which weight alpha?

Question: the reference study found that blending DFA's credit with a continuously
trained auxiliary (a = alpha aux + (1 - alpha) DFA) gained about a point on
CIFAR-10 at alpha=0.75 for one seed, through depth-aware trainable perturbation
rather than semantic credit (zero targets and frozen auxiliaries crash), and
that the gain did not replicate over 3 seeds. This search measures every
auxiliary kind at every alpha against plain DFA on the same seeds.

Sweep: scaffold alpha {0.25, 0.5, 0.75, 0.9} x aux kinds x seeds, plus dfa on the
same seeds, then analysis/summary.py. Scaffold runs hand over from DFA after
5% of the epochs (the reference study's t0=5 of 100).

    python searches/scaffold_blend.py --preset smoke
    python searches/scaffold_blend.py --preset mnist1d   # MNIST-1D, 2 CPU cores
    python searches/scaffold_blend.py --address auto --data-dir ~/data/cifar10

Cost: mnist1d is 15 trials, not timed (reproduce.py --preset mnist1d runs its alpha 0.75 slice, 6 trials: 1.5 min on
2 CPU cores, docs/results/reproduction_mnist1d.md); smoke is 5 trials, 22 s on 2 CPU cores (measured by `python -m
pytest tests/test_searches.py -k smoke_preset --durations=5` in one running local Ray instance, on a contended
host); paper is 99 trials of 100 CIFAR-10 epochs, not timed here (the vector-field kinds add about (L+1) x 2 M
forward passes a step)."""

import sys

from raycredit.rules.scaffold import aux_kinds
from raycredit.search import MNIST1D, REFERENCE, Preset, run_search

AUX_KINDS = list(aux_kinds())

PRESETS = {
    "smoke": Preset(
        doc="synthetic alpha=1 d=64 L=4, blend {0.5, 0.9} x aux {random_trainable, zero_target} + dfa, seed 0, "
            "5 epochs",
        grid={"rule": ["scaffold"], "blend_alpha": [0.5, 0.9], "aux_kind": ["random_trainable", "zero_target"],
              "seed": [0]},
        also=({"rule": ["dfa"], "seed": [0]},),
        fixed={**REFERENCE,
               "dataset": "synthetic", "alpha": 1.0, "d": 64, "L": 4, "n_train": 1000, "n_test": 500,
               "epochs": 5, "warmup_ratio": 0.2, "probe_size": 128, "rho_dirs": 8, "diag_every": 5,
               "checkpoint_every": 2},
    ),
    "mnist1d": Preset(
        doc="mnist1d d=128 L=4, blend {0.25, 0.5, 0.75, 0.9} x aux random_trainable + dfa, seeds 0-2, 15 epochs",
        grid={"rule": ["scaffold"], "blend_alpha": [0.25, 0.5, 0.75, 0.9], "aux_kind": ["random_trainable"],
              "seed": [0, 1, 2]},
        also=({"rule": ["dfa"], "seed": [0, 1, 2]},),
        fixed={**REFERENCE, **MNIST1D, "epochs": 15, "warmup_ratio": 0.05, "diag_every": 5, "checkpoint_every": 5},
    ),
    "paper": Preset(
        doc="cifar10 d=256 L=4, blend {0.25, 0.5, 0.75, 0.9} x 8 aux kinds + dfa, seeds 0-2, 100 epochs",
        grid={"rule": ["scaffold"], "blend_alpha": [0.25, 0.5, 0.75, 0.9], "aux_kind": AUX_KINDS,
              "seed": [0, 1, 2]},
        also=({"rule": ["dfa"], "seed": [0, 1, 2]},),
        fixed={**REFERENCE,
               "dataset": "cifar10", "d": 256, "L": 4, "epochs": 100, "warmup_ratio": 0.05, "diag_every": 10,
               "checkpoint_every": 10},
    ),
}


def main(argv: list[str] | None = None) -> int:
    return run_search("scaffold_blend", __doc__, PRESETS, default_preset="paper",
                      analysis=("analysis.summary:run", "analysis.plots:run"), argv=argv)


if __name__ == "__main__":
    sys.exit(main())
