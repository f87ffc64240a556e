"""Anchors: do raycredit's FA and DFA reproduce the published algorithms' standing against BP?

Question: on real data, canonical FA (Lillicrap et al. 2016, fa_mode=lillicrap) and DFA (Nøkland 2016)
on a plain tanh MLP should sit within a few points of BP, as published for MNIST-like data. Does that
hold here, on the plain MLP and on the ResMLP, and what do the reference study's choices (per-sample
credit normalization; its block-level FA, fa_mode=reference) do to it? frozen (only the readout
learns) is the last-layer-only control.

Sweep, per seed: arch mlp (d=256, L=2, tanh) and resmlp (d=256, L=4) x {fa, dfa} x credit_norm
{off, on}, the reference FA on resmlp with credit_norm {off, on}, and bp and frozen on each; then
analysis/anchors.py (accuracy, deep cos, the gap to BP, the published anchors beside them).

    python searches/anchors.py --preset smoke                       # digits, seed 0, 20 epochs
    python searches/anchors.py --preset paper                       # digits, seeds 0-4, 30 epochs
    python searches/anchors.py --preset paper --dataset cifar10 --data-dir ~/data/cifar10 \\
        --set d=1000 --seeds 0,1,2                                  # CIFAR-10 (the MLP gets L=2 of width 1000)

Needs scikit-learn for digits (pip install 'raycredit[digits]'). Cost: smoke is 14 trials
(docs/results/anchors.md has the measured wall time of the command that produced its table); paper
is 70 trials of 30 digits epochs.
"""

import sys

from analysis import anchors
from raycredit.search import Preset, run_search

MLP = {"arch": ["mlp"], "d": [256], "L": [2], "activation": ["tanh"]}
RESMLP = {"arch": ["resmlp"], "d": [256], "L": [4]}


def spaces(seeds: list[int]) -> dict:
    local = {"rule": ["fa", "dfa"], "credit_norm": [False, True], "seed": seeds}
    controls = {"rule": ["bp", "frozen"], "seed": seeds}
    reference_fa = {"rule": ["fa"], "fa_mode": ["reference"], "credit_norm": [False, True], "seed": seeds}
    return dict(grid={**MLP, **local}, also=({**MLP, **controls}, {**RESMLP, **local}, {**RESMLP, **controls},
                                             {**RESMLP, **reference_fa}))


PRESETS = {
    "smoke": Preset(
        doc="digits, mlp d=256 L=2 tanh and resmlp d=256 L=4, fa/dfa x credit_norm + reference fa + bp/frozen, "
            "seed 0, 20 epochs",
        **spaces([0]),
        fixed={"dataset": "digits", "epochs": 20, "probe_size": 256, "rho_dirs": 8, "diag_every": 20,
               "checkpoint_every": 10},
    ),
    "paper": Preset(
        doc="digits, the smoke grid over seeds 0-4, 30 epochs",
        **spaces([0, 1, 2, 3, 4]),
        fixed={"dataset": "digits", "epochs": 30, "probe_size": 256, "diag_every": 10, "checkpoint_every": 10},
    ),
}


def main(argv: list[str] | None = None) -> int:
    return run_search("anchors", __doc__, PRESETS, default_preset="smoke", analysis=anchors.run, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
