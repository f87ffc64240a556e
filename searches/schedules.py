"""Credit schedules (the reference study's phases 8, 9B and 9C): when, and where in depth, should a learned credit take
over from DFA?

Question: 7A suggested credit is most useful early; 8 tested it online. DFA alone reached 0.312 on CIFAR-10,
a vector field (Vec) from epoch 0 stuck near chance (0.154), Vec for 5 epochs then DFA 0.266, DFA for 20 then
Vec 0.129: the cold-start paradox. 9B refit a blended Vec (alpha 0.75) for 1 epoch every 5 (0.140); 9C blended
Vec into the last 1 or 2 blocks only (0.308, 0.311: neutral). Each schedule here is a branch of one of two
trunks per seed (DFA_only and Vec_only_from_0), so the schedules share their first epochs exactly.

Sweep: trunks dfa and vector_field (no warm-up); branches Vec_T<a>_then_DFA (from the Vec trunk at a),
DFA_T<b>_then_Vec (from the DFA trunk at b), and from the DFA trunk at a: a scaffold blend (alpha 0.75) of a
vector field refit for R epochs every K blended epochs (9B), and of a continuously trained vector field in
the last 1 and 2 blocks only (9C). Then analysis/lineage.py schedules: accuracy at a, at b and at the end.

    python searches/schedules.py --preset smoke
    python searches/schedules.py --preset mnist1d   # MNIST-1D, 2 CPU cores
    python searches/schedules.py --address auto --data-dir ~/data/cifar10

Cost: mnist1d is 21 trials, 10.9 min on 2 CPU cores as a stage of reproduce.py --preset mnist1d
(docs/results/reproduction_mnist1d.md); smoke is 4 trunks and 10 branches of 8 epochs on synthetic data
(docs/PERFORMANCE.md); paper is 2 trunks and 5 branches of 100 CIFAR-10 epochs per seed, not timed here."""

import sys

from raycredit.search import MNIST1D, REFERENCE, Branch, Preset, run_search


def schedules(a: int, b: int, refit_every: int) -> tuple[Branch, ...]:
    def warm_until_t0(c: dict) -> float:  # the scaffold's warm-up: exactly the trunk's epochs (handoff.py)
        return (c["parent_epoch"] + 0.5) / c["epochs"]

    trunk = {"parent_run": [""]}
    blend = {"rule": "scaffold", "aux_kind": "vector_field", "blend_alpha": 0.75, "warmup_ratio": warm_until_t0}
    return (Branch(of={**trunk, "rule": ["vector_field"]}, at=(a,), fixed={"rule": "dfa"}),
            Branch(of={**trunk, "rule": ["dfa"]}, at=(b,), fixed={"rule": "vector_field", "warmup_ratio": 0.0}),
            Branch(of={**trunk, "rule": ["dfa"]}, at=(a,), fixed={**blend, "refit_every": refit_every}),
            Branch(of={**trunk, "rule": ["dfa"]}, at=(a,), grid={"blend_layers": [1, 2]}, fixed=blend))


PRESETS = {
    "smoke": Preset(
        doc="synthetic alpha=1 d=64 L=4, 8 epochs, seeds {0,1}: DFA_only, Vec_only_from_0, Vec_T2_then_DFA, "
            "DFA_T4_then_Vec, refit 1 epoch every 2 from 2, last 1/2 blocks from 2",
        grid={"rule": ["dfa", "vector_field"], "seed": [0, 1]},
        fixed={**REFERENCE, "dataset": "synthetic", "alpha": 1.0, "d": 64, "L": 4, "n_train": 2000,
               "n_test": 500, "epochs": 8, "warmup_ratio": 0.0, "probe_size": 128, "rho_dirs": 8,
               "diag_every": 4, "checkpoint_every": 4},
        branches=schedules(2, 4, refit_every=2),
    ),
    "mnist1d": Preset(
        doc="mnist1d d=128 L=4, 30 epochs, seeds 0-2: the reference study's schedules at the same fractions of "
            "training (T2, T6; refit 1 epoch every 2 from 2; last 1/2 blocks from 2)",
        grid={"rule": ["dfa", "vector_field"], "seed": [0, 1, 2]},
        fixed={**REFERENCE, **MNIST1D, "epochs": 30, "warmup_ratio": 0.0, "diag_every": 10, "checkpoint_every": 2},
        branches=schedules(2, 6, refit_every=2),
    ),
    "paper": Preset(
        doc="cifar10 d=256 L=4, 100 epochs, seed 0: the reference study's schedules (T5, T20; refit 1 epoch every 5 "
            "from 5; last 1/2 blocks from 5)",
        grid={"rule": ["dfa", "vector_field"], "seed": [0]},
        fixed={**REFERENCE, "dataset": "cifar10", "d": 256, "L": 4, "epochs": 100, "warmup_ratio": 0.0,
               "diag_every": 10, "checkpoint_every": 5},
        branches=schedules(5, 20, refit_every=5),
    ),
}


def main(argv: list[str] | None = None) -> int:
    return run_search("schedules", __doc__, PRESETS, default_preset="paper",
                      analysis="analysis.lineage:report_schedules", argv=argv)


if __name__ == "__main__":
    sys.exit(main())
