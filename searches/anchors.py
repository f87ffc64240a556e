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
    python searches/anchors.py --preset mnist1d                     # MNIST-1D, three architectures, seeds 0-4

The mnist1d preset sets the MNIST-1D paper's baselines beside each other (Greydanus & Kobak 2024: its MLP, 40-100-
100-10 with ReLU, and its CNN, three ReLU convolutions of 25 channels; Adam, lr 1e-2, batches of 100) on the
package's default set (data_seed 42, 4000/1000): arch mlp (d=100, L=2, relu), cnn1d (d=25, L=2, kernel 5, relu:
an embedding convolution and two layers; stride 1 and mean pooling where the paper's CNN strides and flattens)
and resmlp (d=128, L=4), each with bp, frozen and fa, dfa, sign_symmetry, kolen_pollack x credit_norm {off, on},
the reference FA on resmlp and cnn1d; 30 epochs, lr 1e-2 for every rule (kolen_pollack keeps its own adamw and
weight_decay).

Needs scikit-learn for digits (pip install 'raycredit[digits]'). Cost: smoke is 14 trials
(docs/results/anchors.md has the measured wall time of the command that produced its table); paper
is 70 trials of 30 digits epochs; mnist1d is 170 trials of 30 epochs (docs/results/anchors_mnist1d.md has the
measured wall time).
"""

import sys

from raycredit.search import Preset, run_search

MLP = {"arch": ["mlp"], "d": [256], "L": [2], "activation": ["tanh"]}
RESMLP = {"arch": ["resmlp"], "d": [256], "L": [4]}


def spaces(seeds: list[int]) -> dict:
    local = {"rule": ["fa", "dfa"], "credit_norm": [False, True], "seed": seeds}
    controls = {"rule": ["bp", "frozen"], "seed": seeds}
    reference_fa = {"rule": ["fa"], "fa_mode": ["reference"], "credit_norm": [False, True], "seed": seeds}
    return dict(grid={**MLP, **local}, also=({**MLP, **controls}, {**RESMLP, **local}, {**RESMLP, **controls},
                                             {**RESMLP, **reference_fa}))


MNIST1D = {"dataset": "mnist1d", "data_seed": 42, "epochs": 30, "lr": 1e-2, "batch_size": 100, "probe_size": 256,
           "rho_dirs": 8, "diag_every": 10, "checkpoint_every": 10}


def mnist1d_spaces(seeds: list[int]) -> dict:
    archs = [{"arch": ["mlp"], "d": [100], "L": [2], "activation": ["relu"]},
             {"arch": ["cnn1d"], "d": [25], "L": [2], "kernel": [5], "activation": ["relu"]},
             {"arch": ["resmlp"], "d": [128], "L": [4]}]
    local = {"rule": ["fa", "dfa", "sign_symmetry", "kolen_pollack"], "credit_norm": [False, True], "seed": seeds}
    controls = {"rule": ["bp", "frozen"], "seed": seeds}
    reference_fa = {"rule": ["fa"], "fa_mode": ["reference"], "credit_norm": [False, True], "seed": seeds}
    spaces = [{**a, **local} for a in archs] + [{**a, **controls} for a in archs]
    spaces += [{**a, **reference_fa} for a in archs if a["arch"] != ["mlp"]]
    return dict(grid=spaces[0], also=tuple(spaces[1:]))


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
    "mnist1d": Preset(
        doc="MNIST-1D's default set, mlp d=100 L=2 / cnn1d d=25 L=2 / resmlp d=128 L=4: bp, frozen, fa (both modes), "
            "dfa, sign_symmetry, kolen_pollack x credit_norm, seeds 0-4, 30 epochs at lr 1e-2",
        **mnist1d_spaces([0, 1, 2, 3, 4]),
        fixed=MNIST1D,
    ),
}


def main(argv: list[str] | None = None) -> int:
    return run_search("anchors", __doc__, PRESETS, default_preset="smoke", analysis="analysis.anchors:run", argv=argv)


if __name__ == "__main__":
    sys.exit(main())
