"""Reproduce the reference study.

Question: do the study's findings hold here, with these rules?

Every search that re-runs one of the study's tables is a stage (raycredit/reproduce.py): the audit, the
both-fail scan, penalty rescue, the toy LQ problem, the synthetic ladder, the credit-bridge boundary ablation,
credit recovery on a frozen snapshot, snapshot exploitability, schedules, hand-offs and scaffold blends. Then
analysis/verify.py sets each of the study's tables (raycredit/reference/study.toml) beside ours and decides
each of its claims: REPRODUCED, CONTRADICTED or INCONCLUSIVE by a stated test over seeds, with a manifest and
the run ids behind every number (reports/<prefix>/reproduction_<preset>.md, also logged to MLflow).

    python searches/reproduce.py --preset smoke            # every stage at toy size, 2 seeds, on CPU
    python searches/reproduce.py --preset smoke --list     # the stages and their trial counts
    python searches/reproduce.py --preset smoke --only audit,toy_lq
    python searches/reproduce.py --preset paper --address auto --data-dir ~/data/cifar10

Re-running the same command finishes only what is missing (a stage whose runs all finished trains nothing
and only draws its analysis again; the others resume). Cost: smoke is 11 stages, 2 seeds each, and mnist1d
348 trials, 3 seeds each, sized for 2 CPU cores (docs/results/reproduction_<preset>.md state their measured
wall times); paper runs every search's paper preset (CIFAR-10, the study's d, L, epochs and seeds) for a GPU
cluster, not timed here.
"""

import sys

from analysis import verify
from raycredit.reproduce import Plan, Stage, run

# in dependency order; within a stage, its search runs trunks before branches
SEARCHES = ["audit", "both_fail_scan", "penalty_rescue", "toy_lq", "synthetic_ladder", "warmup_tgw_ablation",
            "snapshot_recovery", "exploitability", "schedules", "handoff", "scaffold_blend"]
ONE_SEED_SMOKE = {"audit", "penalty_rescue", "toy_lq", "synthetic_ladder", "warmup_tgw_ablation", "scaffold_blend"}

# mnist1d: the study's CIFAR-10 stages on MNIST-1D, the synthetic ones at the "cpu" size, the toy LQ as the study ran it
MNIST1D = {"audit": "mnist1d", "both_fail_scan": "mnist1d", "penalty_rescue": "mnist1d_ends", "toy_lq": "paper",
           "synthetic_ladder": "cpu", "warmup_tgw_ablation": "cpu"}
# ...and within 90 minutes on 2 cores (stage walls measured on MNIST-1D): of the scan, the grid's cells the
# tables read (its largest d, credit normalization on, as the study ran it); of the blends, alpha 0.75 (the
# study's replication); the hand-off trunk 10 epochs (branches from t0=2: 8 epochs, 13 with the prefit); the
# synthetic ladder 20 epochs and the warm-up ablation 12
MNIST1D_ARGS = {"both_fail_scan": ("--set", "d=128", "--set", "credit_norm=true"),
                "scaffold_blend": ("--set", "blend_alpha=0.75"), "handoff": ("--epochs", "10"),
                "synthetic_ladder": ("--epochs", "20"), "warmup_tgw_ablation": ("--epochs", "12")}

PRESETS = {
    "smoke": Plan("every stage's smoke preset, 2 seeds (synthetic data, toy size)",
                  tuple(Stage(s, "smoke", ("--seeds", "0,1") if s in ONE_SEED_SMOKE else ()) for s in SEARCHES)),
    "mnist1d": Plan("the CIFAR-10 stages on MNIST-1D, the synthetic ones at their cpu size, the toy LQ as the "
                    "reference study ran it; 3 seeds",
                    tuple(Stage(s, MNIST1D.get(s, "mnist1d"), MNIST1D_ARGS.get(s, ())) for s in SEARCHES)),
    "paper": Plan("every stage's paper preset: CIFAR-10, the study's d, L, epochs and seeds (a GPU cluster)",
                  tuple(Stage(s, "paper") for s in SEARCHES)),
}


def main(argv: list[str] | None = None) -> int:
    return run(__doc__, PRESETS, verify.run, argv)


if __name__ == "__main__":
    sys.exit(main())
