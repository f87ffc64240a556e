"""sign_symmetry: feedback with the signs of the forward weights (Liao, Leibo & Poggio 2016, "How important
is weight symmetry in backpropagation?"; at ImageNet scale: Xiao, Chen, Liao & Poggio 2018,
"Biologically-plausible learning algorithms can scale to large datasets").

fa's layer-wise form (`fa_mode` lillicrap, rules/fa.py) with B = sign(W) * feedback_scale / sqrt(out_features)
in place of a fixed random B: every linear layer inside the blocks and the head sends the error to its input
through the signs of its current weight, recomputed at every step (the feedback follows the forward weights'
signs, never their magnitudes). On a plain MLP (arch=mlp) with credit_norm off: delta_L = e,
delta_l = (B_{l+1} delta_{l+1}) * act'(z_l), grad W_l = delta_l h_{l-1}^T (a test checks the formula). The
scale is fa's (Liao et al. use sign(W) with batch normalization; Xiao et al. scale it per layer).
"""

from contextlib import contextmanager

import torch

from raycredit.errors import ConfigError
from raycredit.rules.base import Feedback, LocalRule
from raycredit.rules.fa import FA, feedback_linears


class SignSymmetry(FA):
    architectures = ("resmlp", "mlp", "vit_mini", "cnn1d")  # small_cnn's depthwise convolution has no feedback path

    def __init__(self, cfg, model, n_classes):
        LocalRule.__init__(self, cfg, model, n_classes)  # no fixed random matrices: the feedback is sign(W)
        self.linears = feedback_linears(model)
        self.B = Feedback({})
        # a buffer rather than a float so that a population's members can each have their own
        self.register_buffer("scale", torch.tensor(float(self.cfg.feedback_scale)), persistent=False)

    @classmethod
    def check_config(cls, cfg):
        if cfg.rule.fa_mode != "lillicrap":
            raise ConfigError("fa_mode: sign_symmetry is layer-wise (fa_mode lillicrap); reference is fa's own "
                              "block-level variant")
        super().check_config(cfg)

    def exact_layers(self):
        return frozenset()

    @contextmanager
    def feedback(self, model):
        mods = [model.get_submodule(name) for name in self.linears]
        saved = [m.feedback for m in mods]
        for m in mods:
            w = m.weight.detach()
            m.feedback = torch.sign(w) * (self.scale / w.shape[0] ** 0.5)
        try:
            yield
        finally:
            for m, f in zip(mods, saved, strict=True):
                m.feedback = f
