"""Synthetic nonlinearity ladder: how does credit quality of the learned-credit rules scale with the
teacher's nonlinearity alpha and the depth L?

Question: on the teacher-student task (phi_alpha = (1 - alpha) z + alpha tanh z),
which credit estimator recovers the true gradient (deep cos = the reference study's Gamma,
deep rho) online? The seeds: at alpha=1 credit_bridge beats state_bridge and
DFA at every depth, and the vector field (M=4) beats them all (L=4: Vec
0.91/0.96, CB 0.45/0.51, DFA 0.05/0.06 for Gamma/rho). The vector field's
shuffle control (targets permuted across samples) must collapse to zero.

Sweep: alpha {0, 0.25, 0.5, 1} x L {2, 4, 8, 12} x rules {dfa, state_bridge, credit_bridge, vector_field}
x student_activation {own, teacher} x seeds, plus vector_field with shuffle_control at each (alpha, L),
then analysis/summary.py. With student_activation=teacher the student's blocks use the teacher's phi_alpha,
so the student's own dynamics become nonlinear with alpha (the reference's reading of the ladder); with
own they are GELU at every alpha and only the task changes.
The credit nets learn at aux_lr=1e-3 while the model learns at lr=1e-4: at equal rates the
model outruns its credit net and vector_field / credit_bridge lose the gradient online
(docs/results/synthetic_ladder.md).

    python searches/synthetic_ladder.py --preset smoke
    python searches/synthetic_ladder.py --preset cpu   # 3 seeds, 2 CPU cores
    python searches/synthetic_ladder.py --preset paper --set alpha=1 --set L=4   # the study's row
    python searches/synthetic_ladder.py --address auto --preset paper            # the whole ladder

Cost: cpu is 15 trials of 30 epochs on 4000 examples; smoke is 9 trials; before the student axis its 5 trials took
32 s on 2 CPU cores (measured by `python -m pytest tests/test_searches.py -k smoke_preset --durations=5` in one
running local Ray instance, on a contended host); paper is 432 trials of 80 epochs at d=128. The vector field, 2 M
(L+1) extra forward passes a step, is the slowest: 72 s for 20 epochs on 4000 examples on one CPU core (the mean
time_s its runs logged in the command of docs/results/synthetic_ladder.md; dfa's: 20 s), so about 12 minutes for a
paper trial."""

import sys

from raycredit.search import REFERENCE, Preset, run_search

RULES = ["dfa", "state_bridge", "credit_bridge", "vector_field"]
STUDENTS = ["own", "teacher"]  # the student's blocks: GELU, or the teacher's phi_alpha (nonlinear with alpha)
COMMON = {**REFERENCE, "dataset": "synthetic", "lr": 1e-4, "aux_lr": 1e-3, "vf_dirs": 4, "warmup_ratio": 0.2}

PRESETS = {
    "smoke": Preset(
        doc="alpha=1 d=64 L=4, 4 rules x student {own, teacher} + shuffle control, seed 0, 6 epochs on 2000 examples",
        grid={"rule": RULES, "student_activation": STUDENTS, "seed": [0]},
        also=({"rule": ["vector_field"], "shuffle_control": [True], "seed": [0]},),
        fixed={**COMMON, "alpha": 1.0, "d": 64, "L": 4, "n_train": 2000, "n_test": 500, "epochs": 6,
               "probe_size": 128, "rho_dirs": 8, "diag_every": 6, "checkpoint_every": 3},
    ),
    "cpu": Preset(
        doc="the paper's cell alpha=1 L=4: 4 rules (own activation) + shuffle control, d=128, seeds 0-2, 30 epochs on "
            "4000 examples",
        grid={"alpha": [1.0], "L": [4], "rule": RULES, "student_activation": ["own"], "seed": [0, 1, 2]},
        also=({"alpha": [1.0], "L": [4], "rule": ["vector_field"], "shuffle_control": [True], "seed": [0, 1, 2]},),
        fixed={**COMMON, "d": 128, "n_train": 4000, "n_test": 1000, "epochs": 30, "probe_size": 256,
               "diag_every": 10, "checkpoint_every": 10},
    ),
    "paper": Preset(
        doc="alpha {0,.25,.5,1} x L {2,4,8,12} x 4 rules x student {own, teacher} + shuffle control, d=128, "
            "seeds 0-2, 80 epochs",
        grid={"alpha": [0.0, 0.25, 0.5, 1.0], "L": [2, 4, 8, 12], "rule": RULES, "student_activation": STUDENTS,
              "seed": [0, 1, 2]},
        also=({"alpha": [0.0, 0.25, 0.5, 1.0], "L": [2, 4, 8, 12], "rule": ["vector_field"],
               "shuffle_control": [True], "seed": [0, 1, 2]},),
        fixed={**COMMON, "d": 128, "epochs": 80, "probe_size": 256, "diag_every": 10, "checkpoint_every": 10},
    ),
}


def main(argv: list[str] | None = None) -> int:
    return run_search("synthetic_ladder", __doc__, PRESETS, default_preset="paper",
                      analysis=("analysis.summary:run", "analysis.plots:run"), argv=argv)


if __name__ == "__main__":
    sys.exit(main())
