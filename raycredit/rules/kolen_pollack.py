"""kolen_pollack: feedback that learns with the forward weights' own update (Kolen & Pollack 1994,
"Backpropagation without weight transport"; Akrout, Wilson, Humphreys, Lillicrap & Tweed 2019, "Deep learning
without weight transport").

fa's layer-wise form (`fa_mode` lillicrap, rules/fa.py): every linear layer inside the blocks and the head sends
the error to its input through a matrix B of its weight's shape, which starts as fa's fixed random draw. B is
not fixed: it receives exactly the gradient its forward weight W receives (dL/dW = delta h^T, which is local to
the layer: `layers.FeedbackLinear`), and the optimizer's `weight_decay` shrinks both alike. So B and W take the
same steps, and what told them apart at the start decays by (1 - lr weight_decay) a step: B aligns with W (the
W-B angle shrinks) and the credit approaches BP's. Without a decay the initial difference would stay, so the
rule needs weight_decay > 0 (Akrout et al. train with it; `adamw` or `sgd` decay both exactly alike). B learns
in the auxiliary group at `aux_lr`; with aux_lr = lr (the defaults) and SGD, B's step is W's step exactly,
Kolen & Pollack's rule (a test checks it).

The rule brings its own defaults (`defaults`; an explicit value wins, an explicit weight_decay of 0 is refused):
AdamW with weight_decay 5, and B drawn at feedback_scale 0.1. The initial difference shrinks by (1 - lr wd) a
step, so aligning within a budget needs lr wd steps of a few units: the anchors' budget (digits, 30 epochs of 12
steps at lr 1e-3) gives 1.8, and a smaller initial B leaves less to decay. A decay of 10 aligned the plain MLP
further but made one ResMLP seed of three collapse; `benchmarks/kolen_pollack.py` measures the angle and the
accuracy these defaults buy against sign symmetry there (docs/results/kolen_pollack.md). A longer run can use a
smaller decay.
"""

import torch
from torch import nn

from raycredit.errors import ConfigError
from raycredit.rules.fa import FA


class LearnedFeedback(nn.Module):
    """Feedback matrices by name, as parameters (state keys `B.<name>`)."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        super().__init__()
        for name, t in tensors.items():
            self.register_parameter(name, nn.Parameter(t))

    def __getitem__(self, name: str) -> torch.Tensor:
        b = getattr(self, name)
        return b.view(b.shape)  # a view, not the Parameter: a layer holds it as a tensor, and gradients reach B


class KolenPollack(FA):
    architectures = ("resmlp", "mlp", "vit_mini", "cnn1d")  # small_cnn's depthwise convolution has no feedback path
    defaults = {"optimizer": "adamw", "weight_decay": 5.0, "feedback_scale": 0.1}
    knobs = ("aux_lr",)  # B is a parameter of the rule, trained at aux_lr

    def __init__(self, cfg, model, n_classes):
        super().__init__(cfg, model, n_classes)
        self.B = LearnedFeedback({name: self.B[name] for name in list(self.B._buffers)})

    @classmethod
    def check_config(cls, cfg):
        if cfg.train.weight_decay <= 0:
            raise ConfigError("weight_decay: kolen_pollack needs weight_decay > 0 (it decays B and W alike, which is "
                              "what aligns them; its own default is 5 with adamw)")
        if cfg.rule.fa_mode != "lillicrap":
            raise ConfigError("fa_mode: kolen_pollack is layer-wise (fa_mode lillicrap); reference is fa's own "
                              "block-level variant")
        super().check_config(cfg)
