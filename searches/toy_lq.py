"""The toy linear-quadratic problem: which credit rules recover the costate?

Question: on a linear residual student (block_ln and out_ln off, identity blocks) trained on toy_lq's
quadratic cost, where the true gradient dJ/dh_l is the costate of a linear-quadratic control problem over the
layers, how well do DFA, the state bridge and the credit bridge estimate it (costate cosine = deep_cos, rho,
nudging)? The seeds' "Toy LQ" (3 seeds, 8000 steps) found costate cosine DFA 0.001, state bridge 0.945,
credit bridge 0.944. bp is the calibration row (costate cosine 1 by construction).

    python searches/toy_lq.py --preset smoke
    python searches/toy_lq.py --preset paper            # 4 rules x seeds 0-2, 8000 steps each

Then analysis/toy_lq.py prints the seeds' table layout.

Cost: smoke is 4 trials of 320 steps; it took 26.9 s on 2 CPU cores (`python benchmarks/smoke_scan.py --search
toy_lq`); paper is 12 trials of 8000 steps on 10k samples, not timed here.
"""

import sys

from analysis import toy_lq
from raycredit.search import Preset, run_search

RULES = ["dfa", "state_bridge", "credit_bridge", "bp"]
LINEAR_STUDENT = {"dataset": "toy_lq", "arch": "resmlp", "block_ln": False, "out_ln": False,
                  "student_activation": "teacher", "alpha": 0.0, "mlp_ratio": 1.0}

PRESETS = {
    "smoke": Preset(
        doc="toy_lq input 32 -> 8, d=32 L=4, 4 rules, seed 0, 10 epochs of 32 steps",
        grid={"rule": RULES, "seed": [0]},
        fixed={**LINEAR_STUDENT, "input_dim": 32, "n_classes": 8, "d": 32, "L": 4, "n_train": 2000,
               "n_test": 500, "batch_size": 64, "epochs": 10, "probe_size": 128, "rho_dirs": 8,
               "diag_every": 5, "checkpoint_every": 5},
    ),
    "paper": Preset(
        doc="toy_lq input 32 -> 8, d=32 L=4, 4 rules x seeds 0-2, 100 epochs of 80 steps (8000 steps)",
        grid={"rule": RULES, "seed": [0, 1, 2]},
        fixed={**LINEAR_STUDENT, "input_dim": 32, "n_classes": 8, "d": 32, "L": 4, "n_train": 10000,
               "n_test": 2000, "batch_size": 125, "epochs": 100, "diag_every": 10, "checkpoint_every": 10},
    ),
}


def main(argv: list[str] | None = None) -> int:
    return run_search("toy_lq", __doc__, PRESETS, default_preset="smoke", analysis=toy_lq.run, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
