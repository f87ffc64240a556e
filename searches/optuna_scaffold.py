"""Optuna scaffold search: which scaffold schedule gives the best accuracy on top of DFA?

Question: the reference study tuned the DFA + auxiliary blend by hand (alpha 0.75, a
hand-over after 5 epochs, no freeze). Tree-structured Parzen estimation
(Optuna's TPE through Ray Tune's OptunaSearch) searches alpha, the auxiliary
kind, its learning rate, the freeze / decay schedule and prefit epochs
jointly, with conditional knobs (a freeze point only when freezing, a decay
target only after a freeze, prefit only for auxiliaries that can be prefit);
ASHA stops trials that lag after `grace_period` epochs. A stopped trial
reaches TPE as COMPLETE with its value at the last epoch it ran (Tune's
OptunaSearch reports it so), not as PRUNED: TPE models it like a finished one.
Re-running the same command resumes the search (Tune checkpoints the in-memory
study; Optuna's RDB storage would break Tuner.restore). The best
config is printed and recorded in MLflow as a run tagged raycredit.summary,
and the trials are exported as an Optuna study with importances and plots
under <out>/optuna (`raycredit.study`; `--export-study` alone re-exports).

    python searches/optuna_scaffold.py --preset smoke
    python searches/optuna_scaffold.py --address auto --data-dir ~/data/cifar10 --num-samples 64

Cost: smoke is 6 trials of at most 4 epochs on synthetic data: 23.5 s on 2 CPU cores from an empty folder at
ec93139, Ray's start-up and the study's export included (`time python searches/optuna_scaffold.py --preset
smoke`; 37.7 s at 3e08371, when every trial started its own worker process); paper is 64 trials of up to 100
CIFAR-10 epochs, not timed here (ASHA decides how many run to the end).
"""

import sys

from raycredit.rules.scaffold import aux_kinds
from raycredit.search import REFERENCE, Preset, run_search

AUX_KINDS = list(aux_kinds())


def space(trial, base):
    """Define-by-run space; returns the constants of every trial."""
    trial.suggest_float("blend_alpha", 0.0, 1.0)
    kind = trial.suggest_categorical("aux_kind", AUX_KINDS)
    if kind == "gaussian_noise":
        return {"rule": "scaffold"}
    trial.suggest_float("aux_lr", 1e-4, 1e-2, log=True)
    blended = base.train.epochs - int(base.rule.warmup_ratio * base.train.epochs)
    if kind != "random_trainable":
        trial.suggest_int("prefit_epochs", 0, max(0, min(2, blended - 2)))
    if trial.suggest_int("freeze_after", -1, max(0, blended // 2)) >= 0:  # -1: the auxiliary never freezes
        trial.suggest_float("decay_to", 0.0, 1.0)
    return {"rule": "scaffold"}


PRESETS = {
    "smoke": Preset(
        doc="synthetic alpha=1 d=32 L=3, 6 trials of up to 4 epochs, ASHA grace 2 epochs",
        grid={}, samples=6,
        fixed={**REFERENCE,
               "dataset": "synthetic", "alpha": 1.0, "d": 32, "L": 3, "n_train": 1000, "n_test": 300, "epochs": 4,
               "warmup_ratio": 0.25, "vf_dirs": 2, "probe_size": 64, "rho_dirs": 4, "diag_every": 4,
               "checkpoint_every": 1, "seed": 0},
    ),
    "paper": Preset(
        doc="cifar10 d=256 L=4, 64 trials of up to 100 epochs, seed 0",
        grid={}, samples=64,
        fixed={**REFERENCE,
               "dataset": "cifar10", "d": 256, "L": 4, "epochs": 100, "warmup_ratio": 0.05, "diag_every": 10,
               "checkpoint_every": 5, "seed": 0},
    ),
}


def main(argv: list[str] | None = None) -> int:
    return run_search("optuna_scaffold", __doc__, PRESETS, default_preset="paper",
                      analysis=("analysis.summary:run", "analysis.plots:run"), space=space, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
