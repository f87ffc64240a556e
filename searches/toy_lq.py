"""The toy linear-quadratic problem: which credit rules recover the costate?

Question: on a linear residual student (block_ln and out_ln off, identity blocks) with toy_lq's quadratic cost,
where the true gradient dJ/dh_l is the costate of a linear-quadratic control problem over the layers, how well
do DFA, the state bridge and the credit bridge estimate it (costate cosine = deep_cos, rho, nudging)? The
reference study's "Toy LQ" (3 seeds, 8000 steps) found costate cosine DFA 0.001, state bridge 0.945, credit
bridge 0.944.

The reference study's toy is a credit-recovery problem on a fixed system: its results live in `toy_lq_frozen/`,
and a DFA cosine of 0.001 means that nothing aligned the system with DFA's fixed feedback. So `paper` follows them:
the student stays at its random init (`freeze_model`) while each estimator learns for 8000 steps, with their
credit normalization on (it moves nothing here: only the estimators learn). `trained` is the ablation: the same
rules also train the student, as every other search does, and DFA's training aligns the student with its own
feedback. bp is the calibration row (costate cosine 1 by construction) and trains in both. Nudging is measured
along the RMS-normalized credit at `nudge_eta` (raycredit.diagnostics), a step the reference study does not
state, so its scale is not theirs: compare its ordering. docs/results/toy_lq_paper.md has both tables.

    python searches/toy_lq.py --preset smoke
    python searches/toy_lq.py --preset paper            # 3 rules on the frozen system + bp, seeds 0-2, 8000 steps
    python searches/toy_lq.py --preset trained          # the ablation: the rules train the student

Then analysis/toy_lq.py prints the reference study's table layout.

Cost: smoke is 4 trials of 320 steps (26.9 s on 2 CPU cores, docs/PERFORMANCE.md); paper and trained are 12
trials of 8000 steps on 10k samples each (377 s and 460 s on 2 CPU cores, docs/results/toy_lq_paper.md).
"""

import sys

from raycredit.search import Preset, run_search

RULES = ["dfa", "state_bridge", "credit_bridge"]
LINEAR_STUDENT = {"dataset": "toy_lq", "arch": "resmlp", "block_ln": False, "out_ln": False,
                  "student_activation": "teacher", "alpha": 0.0, "mlp_ratio": 1.0}
SMALL = {**LINEAR_STUDENT, "input_dim": 32, "n_classes": 8, "d": 32, "L": 4}
PAPER = {**SMALL, "n_train": 10000, "n_test": 2000, "batch_size": 125, "epochs": 100, "diag_every": 10,
         "checkpoint_every": 10, "credit_norm": True}


def spaces(seeds: list[int], frozen: bool) -> dict:
    """The rules on the frozen system (or training it), and bp, which always trains (its credit is exact)."""
    return dict(grid={"rule": RULES, "seed": seeds, "freeze_model": [frozen]},
                also=({"rule": ["bp"], "seed": seeds, "freeze_model": [False]},))


PRESETS = {
    "smoke": Preset(
        doc="toy_lq input 32 -> 8, d=32 L=4, the 3 rules on the frozen system + bp, seed 0, 10 epochs of 32 steps",
        **spaces([0], True),
        fixed={**SMALL, "n_train": 2000, "n_test": 500, "batch_size": 64, "epochs": 10, "probe_size": 128,
               "rho_dirs": 8, "diag_every": 5, "checkpoint_every": 5, "credit_norm": True},
    ),
    "paper": Preset(
        doc="the reference study's toy: input 32 -> 8, d=32 L=4, the 3 rules on the frozen system + bp, seeds 0-2, "
            "100 epochs of 80 steps (8000 steps), credit_norm on",
        **spaces([0, 1, 2], True), fixed=PAPER,
    ),
    "trained": Preset(
        doc="the ablation of paper: the rules also train the student",
        **spaces([0, 1, 2], False), fixed=PAPER,
    ),
}


def main(argv: list[str] | None = None) -> int:
    return run_search("toy_lq", __doc__, PRESETS, default_preset="smoke", analysis="analysis.toy_lq:run", argv=argv)


if __name__ == "__main__":
    sys.exit(main())
