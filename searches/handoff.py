"""Hand-offs from one DFA trunk (the reference study's phases 9A and 10A): which auxiliary, blended into DFA's credit
from epoch t0 on, beats DFA continued unchanged?

Question: the reference study checkpointed a DFA trajectory at t0 in {1, 5, 10}, prefit a vector field (Vec) on the
frozen checkpoint, then branched: continue_DFA, handoff_to_Vec (pure Vec), and blends a = alpha Vec +
(1 - alpha) DFA. The blend at alpha=0.75 gained +1.5 pp at t0=5 (one seed). The 10A dissection then showed
the same gain from random, shuffled and time-only trainable auxiliaries, and crashes from zero targets and
frozen auxiliaries: trainable depth-aware perturbation, not learned credit. Here every branch starts from
the same trunk checkpoint (one trunk per seed) and is compared with that trunk continued ("diff vs trunk",
paired by seed).

Sweep: a dfa trunk per seed (keeping its checkpoints at each t0), then scaffold branches at each t0 (`raycredit
.rules.scaffold`: its warm-up is the trunk's t0 epochs, so a branch equals a scaffold run from scratch):
Vec prefit for P epochs on the frozen model then alpha in the presets' list (1 = handoff_to_Vec), and at
alpha 0.75 without prefit the 10A auxiliaries (random_trainable, shuffled_trainable, zero_target, time_only,
constant_input, gaussian_noise, perlayer_vector, random_trainable frozen after 1 epoch, and frozen with its
alpha decayed to 0). Branches with a prefit train P more epochs, so that every model trains E epochs. Then
analysis/lineage.py handoff.

    python searches/handoff.py --preset smoke
    python searches/handoff.py --preset mnist1d   # MNIST-1D, 2 CPU cores
    python searches/handoff.py --address auto --data-dir ~/data/cifar10

Cost: mnist1d is 39 trials; with --epochs 10, as reproduce.py --preset mnist1d runs it, 7.4 min on 2 CPU cores
(docs/results/reproduction_mnist1d.md); smoke is 2 trunks and 24 branches of 8-10 epochs on synthetic data
(docs/PERFORMANCE.md); paper is 3 trunks and 3 x (3 x 4 + 9) branches of 100 (+60 prefit) CIFAR-10 epochs, not timed
here."""

import sys

from raycredit.search import MNIST1D, REFERENCE, Branch, Preset, run_search

DISSECTION = [{"aux_kind": k} for k in ("random_trainable", "shuffled_trainable", "zero_target", "time_only",
                                        "constant_input", "gaussian_noise", "perlayer_vector")] + [
    {"aux_kind": "random_trainable", "freeze_after": 1},
    {"aux_kind": "random_trainable", "freeze_after": 1, "decay_to": 0.0}]


def handoff(t0s: list[int], alphas: list[float], prefit: int, dissect_at: list[int]) -> tuple[Branch, ...]:
    """The scaffold branches of the module docstring, from every dfa trunk."""

    def warm_until_t0(c: dict) -> float:
        # scaffold's warm-up is int(warmup_ratio * epochs) epochs: exactly the trunk's t0
        return (c["parent_epoch"] + 0.5) / c["epochs"]

    vec = Branch(of={"rule": ["dfa"], "parent_run": [""]}, at=tuple(t0s), grid={"blend_alpha": alphas},
                 fixed={"rule": "scaffold", "aux_kind": "vector_field", "prefit_epochs": prefit,
                        "epochs": lambda c: c["epochs"] + prefit, "warmup_ratio": warm_until_t0})
    dissection = [Branch(of={"rule": ["dfa"], "parent_run": [""]}, at=tuple(dissect_at),
                         fixed={"rule": "scaffold", "blend_alpha": 0.75, **knobs, "warmup_ratio": warm_until_t0})
                  for knobs in DISSECTION]
    return (vec, *dissection)


PRESETS = {
    "smoke": Preset(
        doc="synthetic alpha=1 d=64 L=4, dfa trunk 8 epochs, seeds {0,1}, t0=2: Vec prefit 2 epochs then alpha "
            "{0.5, 0.75, 1}, and the 9 auxiliaries of 10A at alpha 0.75",
        grid={"rule": ["dfa"], "seed": [0, 1]},
        fixed={**REFERENCE, "dataset": "synthetic", "alpha": 1.0, "d": 64, "L": 4, "n_train": 2000,
               "n_test": 500, "epochs": 8, "probe_size": 128, "rho_dirs": 8, "diag_every": 4,
               "checkpoint_every": 4},
        branches=handoff([2], [0.5, 0.75, 1.0], prefit=2, dissect_at=[2]),
    ),
    "mnist1d": Preset(
        doc="mnist1d d=128 L=4, dfa trunk 15 epochs, seeds 0-2, t0=2: Vec prefit 5 epochs then alpha {0.5, 0.75, "
            "1}, and the 9 auxiliaries of 10A at alpha 0.75",
        grid={"rule": ["dfa"], "seed": [0, 1, 2]},
        fixed={**REFERENCE, **MNIST1D, "epochs": 15, "diag_every": 5, "checkpoint_every": 2},
        branches=handoff([2], [0.5, 0.75, 1.0], prefit=5, dissect_at=[2]),
    ),
    "paper": Preset(
        doc="cifar10 d=256 L=4, dfa trunk 100 epochs, seeds 0-2, t0 {1,5,10}: Vec prefit 60 epochs then alpha "
            "{0.25, 0.5, 0.75, 1}; the 10A auxiliaries at t0=5, alpha 0.75",
        grid={"rule": ["dfa"], "seed": [0, 1, 2]},
        fixed={**REFERENCE, "dataset": "cifar10", "d": 256, "L": 4, "epochs": 100, "diag_every": 10,
               "checkpoint_every": 5},
        branches=handoff([1, 5, 10], [0.25, 0.5, 0.75, 1.0], prefit=60, dissect_at=[5]),
    ),
}


def main(argv: list[str] | None = None) -> int:
    return run_search("handoff", __doc__, PRESETS, default_preset="paper",
                      analysis="analysis.lineage:report_handoff", argv=argv)


if __name__ == "__main__":
    sys.exit(main())
