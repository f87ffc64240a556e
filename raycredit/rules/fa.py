"""fa: feedback alignment, in two forms (`fa_mode`).

lillicrap (default): Lillicrap, Cownden, Tweed & Akerman 2016, "Random synaptic feedback weights support
error backpropagation for deep learning". The error travels back through the network's own backward
pass, except that every linear layer inside the blocks and the head sends it to its input through a
fixed random matrix B of its weight's shape instead of W (g B in place of g W; `layers.FeedbackLinear`);
nonlinearities, LayerNorms and residual paths use their own derivatives. The credit at h_l is that
signal, and each block's parameters follow it through the block's own (feedback) backward. On a plain
MLP (arch=mlp) with credit_norm off this is the published rule: delta_L = e, delta_l =
(B_{l+1} delta_{l+1}) * act'(z_l), grad W_l = delta_l h_{l-1}^T; with B = W it is backprop exactly.
B's entries ~ N(0, feedback_scale^2 / out_features) (a variance-preserving backward). The embedding's
own input gradient is never needed, so it has no B. Supports resmlp, mlp, vit_mini and cnn1d (whose
convolutions are Linears on windows, `models.Conv1d`): small_cnn's depthwise convolution has no feedback path.

reference: the reference study's block-level variant. a_L is the exact output-local gradient and
a_l = B_l a_{l+1} with a fixed random d x d B_l (entries ~ N(0, feedback_scale^2 / d)): no local
derivative of the next block. On vit_mini and small_cnn B_l acts on the width d of every token /
position (a random 1x1 feedback). Needs layers of one shape (not mlp, whose h_0 is the input).
"""

from contextlib import contextmanager

import torch

from raycredit.errors import ConfigError
from raycredit.layers import Linear
from raycredit.models import ARCHITECTURES
from raycredit.rules.base import Feedback, LocalRule, dot


def feedback_linears(model) -> list[str]:
    """Names of the `Linear` layers that send credit backwards: those inside the blocks and the head."""
    return [name for name, m in model.named_modules()
            if isinstance(m, Linear) and name.startswith(("blocks.", "readout"))]


class FA(LocalRule):
    architectures = tuple(ARCHITECTURES)
    knobs = ("fa_mode", "feedback_scale")

    def __init__(self, cfg, model, n_classes):
        super().__init__(cfg, model, n_classes)
        g = self.feedback_generator(cfg)
        scale = self.cfg.feedback_scale
        if self.cfg.fa_mode == "reference":
            # B[l] maps a_{l+1} to a_l, l = 0..L-1
            self.B = Feedback({str(l): torch.randn(self.d, self.d, generator=g) * (scale / self.d**0.5)
                               for l in range(self.L)})
            self.linears: list[str] = []
        else:
            self.linears = feedback_linears(model)
            weights = {name: model.get_submodule(name).weight for name in self.linears}
            self.B = Feedback({name.replace(".", "_"): torch.randn(w.shape, generator=g) * (scale / w.shape[0]**0.5)
                               for name, w in weights.items()})

    @classmethod
    def check_config(cls, cfg):
        if cfg.rule.fa_mode == "lillicrap" and cfg.model.arch == "small_cnn":
            raise ConfigError("fa_mode: lillicrap has no feedback path through small_cnn's depthwise convolution; "
                              "use --fa-mode reference (or another arch)")
        if cfg.rule.fa_mode == "reference" and cfg.model.arch == "mlp":
            raise ConfigError("fa_mode: reference needs layers of one shape; mlp's h_0 is the input "
                              "(use --fa-mode lillicrap)")

    def exact_layers(self):
        return frozenset({self.L}) if self.cfg.fa_mode == "reference" else frozenset()

    @contextmanager
    def feedback(self, model):
        """While open, the model's feedback linears send gradients to their inputs through B."""
        mods = [model.get_submodule(name) for name in self.linears]
        saved = [m.feedback for m in mods]
        for name, m in zip(self.linears, mods, strict=True):
            m.feedback = self.B[name.replace(".", "_")]
        try:
            yield
        finally:
            for m, f in zip(mods, saved, strict=True):
                m.feedback = f

    def feedback_pairs(self, model):
        """Each feedback linear's B against its W (lillicrap, sign_symmetry, kolen_pollack); the reference
        form's B_l stands in for a block's Jacobian, which no weight is, so it has none."""
        with self.feedback(model):
            return {name: (model.get_submodule(name).feedback, model.get_submodule(name).weight)
                    for name in self.linears}

    def loss(self, model, x, y):
        with self.feedback(model):
            return super().loss(model, x, y)

    def credits(self, model, hs, logits, y):
        if self.cfg.fa_mode == "reference":
            a = [self.output_local_grad(model, hs[-1], y)]
            for l in range(self.L - 1, -1, -1):
                a.append(a[-1] @ self.B[str(l)].T)
            return a[::-1]
        with self.feedback(model):
            a = [self.output_local_grad(model, hs[-1], y)]
            for l in range(self.L, 0, -1):
                a.append(self.input_grad(lambda h, l=l, al=a[-1]: dot(model.step(l, h, model.f(l, h)), al).sum(),
                                         hs[l - 1]))
        return a[::-1]
