"""Frozen, validated configuration of one training run.

A `Config` has seven sections (model, data, rule, train, diag, lineage, exploit). Field names are
unique across sections, so a run can be described by a flat dict
(``{"rule": "fa", "d": 512, "L": 2}``) or the nested form that `asdict` gives.
Every field carries a one-line doc (shown by ``raycredit train --help``) and its
valid range; `Config.from_dict` rejects unknown keys, wrong types and
out-of-range values with a `ConfigError` naming the key.

This module knows no learning rule (nor torch): a rule's own defaults and the checks only a rule can make
are applied where the rules are known, by `raycredit.rules.make_config` (and `validate`, which every rule
build runs).
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field, fields
from typing import Any

from raycredit.errors import ConfigError
from raycredit.knobs import coerce, field_type, knob, number_list, stable_hash

SEED_MAX = 2**31 - 1  # derived seeds (seed * 1_000_003 + ..., seed * 7919 + epoch) must fit torch's int64
MAX_TENSOR_BYTES = 32 * 2**30  # a dataset or model larger than this is a typo, refused before anything starts


@dataclass(frozen=True)
class ModelConfig:
    arch: str = knob("resmlp", "architecture: resmlp, vit_mini and small_cnn (image data) are residual; mlp is a "
                               "plain MLP of L hidden layers of width d, cnn1d a plain 1-D CNN of L convolutions of d "
                               "channels (signals, e.g. mnist1d; no residual, no LayerNorm in either)",
                     choices=("resmlp", "vit_mini", "small_cnn", "mlp", "cnn1d"))
    d: int = knob(256, "residual-stream width", lo=1)
    L: int = knob(4, "number of residual blocks", lo=1)
    mlp_ratio: float = knob(4.0, "block hidden width as a multiple of d", lo=0, lo_open=True)
    residual_add: bool = knob(True, "h_{l+1} = h_l + f_l(h_l); off gives h_{l+1} = f_l(h_l) (not mlp, cnn1d: never "
                                    "residual)")
    out_ln: bool = knob(True, "terminal LayerNorm before the readout (not mlp, cnn1d: no LayerNorm)")
    block_ln: bool = knob(True, "resmlp: LayerNorm at the input of every block; off, with student_activation=teacher "
                                "at alpha=0 and out_ln off, the network is linear (the toy_lq student)")
    w2_std: float = knob(0.02, "init std of each block's second linear W2 (0 = zero-init blocks; not mlp)", lo=0)
    activation: str = knob("gelu", "block nonlinearity", choices=("gelu", "relu", "tanh"))
    student_activation: str = knob("own", "own: `activation`; teacher: the synthetic teacher's phi_alpha with the "
                                          "data's alpha in every block (the nonlinearity ladder's student)",
                                   choices=("own", "teacher"))
    patch_size: int = knob(4, "vit_mini: side of the square patches", lo=1)
    heads: int = knob(4, "vit_mini: attention heads (must divide d)", lo=1)
    kernel: int = knob(5, "cnn1d: width of every convolution, in positions (stride 1, zero 'same' padding)", lo=1)


@dataclass(frozen=True)
class DataConfig:
    dataset: str = knob("synthetic", "dataset (digits: scikit-learn's 8x8 handwritten digits, shipped with it; "
                                     "mnist1d: MNIST-1D, made by its package's generator; toy_lq: the "
                                     "linear-quadratic toy, target vectors and a quadratic cost)",
                        choices=("synthetic", "digits", "mnist1d", "cifar10", "cifar100", "npz", "toy_lq"))
    data_dir: str = knob("", "cifar: folder holding the torchvision files; npz: path of the .npz file; mnist1d: "
                             "folder of the generated sets (default $XDG_CACHE_HOME/raycredit, ~/.cache/raycredit)")
    download: bool = knob(False, "cifar: download into data_dir when missing")
    alpha: float = knob(1.0, "synthetic: teacher nonlinearity phi(z) = (1-alpha) z + alpha tanh(z)", lo=0, hi=1)
    input_dim: int = knob(8, "synthetic: input dimension", lo=1)
    teacher_depth: int = knob(2, "synthetic: hidden layers of the teacher network", lo=0)
    teacher_width: int = knob(128, "synthetic: hidden width of the teacher network", lo=1)
    teacher_gain: float = knob(2.0, "synthetic: teacher weights ~ N(0, gain^2 / fan_in); a larger gain drives "
                                     "tanh into saturation (more nonlinear; no effect at alpha=0)", lo=0, lo_open=True)
    n_classes: int = knob(10, "synthetic: number of classes C; toy_lq: dimension of the target vectors", lo=2)
    lq_noise: float = knob(0.5, "toy_lq: std of Gaussian noise on the targets, the cost's irreducible part (the "
                                "per-sample costate stays away from 0 at the optimum)", lo=0)
    n_train: int = knob(0, "training examples (0 = synthetic 10000 / mnist1d 4000 / all of digits or the file)",
                        lo=0)
    n_test: int = knob(0, "test examples (0 = synthetic 2000 / mnist1d 1000 / all of digits or the file)", lo=0)
    data_seed: int = knob(0, "synthetic: seed of the teacher and inputs; digits: of the train/test split; mnist1d: "
                             "the generator's seed (42: its package's default set); fixed across training seeds",
                          lo=0, hi=SEED_MAX)
    random_targets: bool = knob(False, "fresh uniformly random labels for every training mini-batch (negative control)")


@dataclass(frozen=True)
class RuleConfig:
    rule: str = knob("bp", "learning rule (see raycredit.rules.RULES)")
    penalty_lam: float = knob(0.0, "weight of the block-output penalty lam * mean ||f_l(h_l)||^2", lo=0)
    credit_norm: bool = knob(False, "reference study: normalize local credit a / (RMS(a) + 1e-6) per sample before "
                                    "the update (off = the published algorithms)")
    fa_mode: str = knob("lillicrap", "fa: lillicrap = Lillicrap et al. 2016 (every linear layer's backward with a "
                                     "fixed random B in place of W^T); reference = the reference study's block-level "
                                     "a_l = B_l a_{l+1} with exact a_L", choices=("lillicrap", "reference"))
    feedback_scale: float = knob(1.0, "fa/dfa: std of the fixed random feedback matrices, in units of each rule's "
                                      "1/sqrt(width) (rules/fa.py, rules/dfa.py)", lo=0, lo_open=True)
    train_embedding: bool = knob(False, "frozen: also train the embedding (blocks stay at init)")
    fit_l2: float = knob(1e-4, "frozen: L2 weight of the fitted readout, the convex optimum of mean task loss + "
                               "fit_l2/2 ||W||^2 on the standardized frozen features (raycredit.rules.frozen)",
                         lo=0, lo_open=True)
    ep_beta: float = knob(0.01, "ep: nudging strength beta", lo=0, lo_open=True)
    ep_steps: int = knob(20, "ep: gradient steps of the nudged-phase relaxation", lo=1)
    ep_step_size: float = knob(0.03, "ep: relaxation step size (too large a step diverges as blocks grow)",
                               lo=0, lo_open=True)
    ep_credit: str = knob("error", "ep: credit from the equilibrium's prediction errors, or from the raw state "
                                   "shift h^beta - h^0", choices=("error", "state_diff"))
    s_type: str = knob("eT", "vector_field/credit_bridge: conditioning code s (softmax error eT, dCE/dh_L deltaL, "
                              "either with a projection of h_L)", choices=("eT", "deltaL", "eT_hL", "deltaL_hL"))
    vf_dirs: int = knob(4, "vector_field: random directions M per sample and layer", lo=1)
    vf_eps: float = knob(1e-2, "vector_field: finite-difference step along each direction", lo=0, lo_open=True)
    one_sided: bool = knob(False, "vector_field: one-sided instead of central differences")
    tw: float = knob(1.0, "vector_field: weight of matching the exact dCE/dh_L at the last layer", lo=0)
    shuffle_control: bool = knob(False, "vector_field: shuffle the measured targets across samples (negative control)")
    tgw: float = knob(1.0, "credit_bridge: weight of terminal gradient matching grad V(h_L) ~ dCE/dh_L", lo=0)
    cb_samples: int = knob(4, "credit_bridge: noisy successor samples K of the bridge-consistency target", lo=1)
    cb_sigma: float = knob(0.05, "credit_bridge: noise std of those samples", lo=0)
    cb_temp: float = knob(1.0, "credit_bridge: temperature of the soft-min over successors", lo=0, lo_open=True)
    warmup_ratio: float = knob(0.2, "vector_field/credit_bridge/scaffold: fraction of the epochs trained with "
                                    "DFA's credit first", lo=0, hi=1, hi_open=True)
    blend_alpha: float = knob(0.75, "scaffold: weight alpha of the auxiliary in a = alpha aux + (1 - alpha) DFA",
                              lo=0, hi=1)
    aux_kind: str = knob("random_trainable", "scaffold: the auxiliary (see raycredit.rules.scaffold)",
                         choices=("vector_field", "random_trainable", "shuffled_trainable", "perlayer_vector",
                                  "time_only", "constant_input", "zero_target", "gaussian_noise"))
    freeze_after: int = knob(-1, "scaffold: blended epochs after which the auxiliary stops learning (-1 = never)",
                             lo=-1)
    decay_to: float = knob(-1.0, "scaffold: after the freeze alpha goes linearly to this by the last epoch "
                                 "(-1 = alpha stays)", lo=-1, hi=1)
    prefit_epochs: int = knob(0, "scaffold: epochs after the warm-up in which only the auxiliary learns", lo=0)
    refit_every: int = knob(0, "scaffold: periodic refit (the reference study's 9B): after every this many blended "
                               "epochs, refit_epochs in which only the auxiliary learns, which is frozen in between "
                               "(0 = off: it learns throughout)", lo=0)
    refit_epochs: int = knob(1, "scaffold: epochs of each periodic refit", lo=1)
    blend_layers: int = knob(0, "scaffold: blend only the last this many blocks' credit; the layers below keep "
                                "DFA's (the reference study's 9C top-down curriculum; 0 = every layer)", lo=0)
    aux_width: int = knob(0, "hidden width of auxiliary nets (bridges, value/vector nets; 0 = 2 d)", lo=0)
    aux_lr: float = knob(1e-3, "learning rate of auxiliary nets", lo=0, lo_open=True)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = knob(10, "training epochs", lo=1)
    batch_size: int = knob(128, "mini-batch size", lo=1)
    lr: float = knob(1e-3, "learning rate", lo=0, lo_open=True)
    optimizer: str = knob("adam", "optimizer", choices=("adam", "adamw", "sgd"))
    momentum: float = knob(0.9, "sgd momentum", lo=0, hi=1, hi_open=True)
    weight_decay: float = knob(0.0, "weight decay", lo=0)
    clip_norm: float = knob(1.0, "clip the global gradient norm of each step to this (0 = off)", lo=0)
    seed: int = knob(0, "training seed: init, feedback matrices, batch order", lo=0, hi=SEED_MAX)
    device: str = knob("auto", "auto (cuda when available), cpu or cuda[:i]")
    checkpoint_every: int = knob(1, "epochs between checkpoints (the last epoch is always saved)", lo=1)
    precision: str = knob("fp32", "training steps' forward passes: fp32, or bf16 autocast (weights, optimizer "
                                  "and diagnostics stay fp32)", choices=("fp32", "bf16"))
    compile: bool = knob(False, "torch.compile the training step's forward and loss (the first steps pay "
                                "the compilation)")
    freeze_model: bool = knob(False, "train only the rule's auxiliary nets; the model's weights stay as they are "
                                     "(credit recovery on a frozen snapshot: the reference study's phases 4A/5B)")
    keep_epochs: str = knob("", "comma-separated epochs whose checkpoints are kept (MLflow artifacts "
                                "checkpoint/epoch-<e>/checkpoint.pt) for branches to start from; the last epoch's "
                                "is always kept")


@dataclass(frozen=True)
class DiagConfig:
    diag_every: int = knob(1, "epochs between diagnostics (the last epoch always has them)", lo=1)
    probe_size: int = knob(256, "fixed probe batch: the first probe_size test examples", lo=2)
    rho_dirs: int = knob(32, "random directions M per sample for rho", lo=1)
    rho_measured: int = knob(2, "rho: directions per sample whose loss change a forward pass measures; the "
                                "linear part of the others is exact and their rest is estimated from these "
                                "(raycredit.diagnostics); rho_dirs or more measures every one", lo=1)
    rho_eps: float = knob(1e-3, "perturbation size for rho (float64)", lo=0, lo_open=True)
    rho_eps_float32: float = knob(1e-1, "perturbation size for rho when the diagnostics run in float32, large "
                                        "enough for float32 to resolve the loss change", lo=0, lo_open=True)
    nudge_eta: float = knob(1e-2, "step along the RMS-normalized credit for nudge", lo=0, lo_open=True)
    diag_dtype: str = knob("float64", "dtype of the diagnostics: float64 (exact), or float32 where it is shown to "
                                      "resolve them: a float64 pass of the probe checks every layer's cosine, "
                                      "nudge and support, and any off by more than 1e-5, or a loss change float32 "
                                      "cannot resolve, measures them all in float64",
                           choices=("float64", "float32"))
    loss_window: int = knob(5, "epochs over which loss_decrease measures the change of train_loss", lo=1)


@dataclass(frozen=True)
class LineageConfig:
    parent_run: str = knob("", "start from this run's checkpoint at parent_epoch instead of from scratch: an MLflow "
                               "run id, the run key of a config in the same experiment, or a checkpoint file or "
                               "`raycredit train --out` folder (raycredit.lineage says what a branch may change)")
    parent_epoch: int = knob(0, "the parent's epoch a branch starts from (its checkpoint must have been kept)", lo=0)


@dataclass(frozen=True)
class ExploitConfig:
    exploitability: bool = knob(False, "measure the starting snapshot instead of training it: k local steps along "
                                       "the rule's credit (bp: the oracle gradient), raw or credit_norm, and the "
                                       "loss change on the same batch and held out (the reference study's phases "
                                       "6A/6.5A/7A)")
    exploit_steps: str = knob("1,5", "exploitability: comma-separated step counts k")
    exploit_etas: str = knob("0.001,0.01,0.1,1", "exploitability: comma-separated step sizes eta (the line search)")
    exploit_blocks: str = knob("all", "exploitability: the blocks that step (the embedding and head stay)",
                               choices=("all", "last"))
    exploit_batches: int = knob(8, "exploitability: training mini-batches measured (mean, spread and update "
                                   "variance over them)", lo=2)
    exploit_held_out: int = knob(1024, "exploitability: test examples of the held-out loss", lo=1)
    exploit_clamp: float = knob(0.0, "exploitability: clamp every gradient element of a local step to [-c, c] "
                                     "(the reference study's phase 6A clamped, value unstated; 0 = off, phase "
                                     "6.5A)", lo=0)


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "rule": RuleConfig,
    "train": TrainConfig,
    "diag": DiagConfig,
    "lineage": LineageConfig,
    "exploit": ExploitConfig,
}
KEY_SECTION: dict[str, str] = {f.name: s for s, cls in SECTIONS.items() for f in fields(cls)}
# the rule section's knobs besides `rule` itself: a rule reads some of them (`raycredit.rules.unused_knobs`)
RULE_KNOBS: frozenset[str] = frozenset(f.name for f in fields(RuleConfig)) - {"rule"}


def param_value(key: str, text: str) -> Any:
    """A config value from its MLflow param (str() of the value), typed as the config key's field."""
    want = field_type(next(f for f in fields(SECTIONS[KEY_SECTION[key]]) if f.name == key))
    return text == "True" if want is bool else want(text)


def check_key(key: str) -> None:
    """Raise ConfigError (with close matches) unless key is a config field."""
    if key not in KEY_SECTION:
        raise _unknown(key)


def _unknown(key: str) -> ConfigError:
    close = difflib.get_close_matches(key, list(KEY_SECTION) + list(SECTIONS), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return ConfigError(f"unknown config key {key!r}{hint}")


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rule: RuleConfig = field(default_factory=RuleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    diag: DiagConfig = field(default_factory=DiagConfig)
    lineage: LineageConfig = field(default_factory=LineageConfig)
    exploit: ExploitConfig = field(default_factory=ExploitConfig)

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        """Build from a flat or nested dict; unknown keys, wrong types and bad values raise ConfigError."""
        if not isinstance(d, dict):
            raise ConfigError(f"config must be a dict, got {type(d).__name__}")
        per_section: dict[str, dict] = {s: {} for s in SECTIONS}
        for key, value in d.items():
            if key in SECTIONS and isinstance(value, dict):
                for k, v in value.items():
                    if KEY_SECTION.get(k) != key:
                        raise _unknown(f"{key}.{k}" if k not in KEY_SECTION else k)
                    per_section[key][k] = v
            elif key in KEY_SECTION:
                per_section[KEY_SECTION[key]][key] = value
            else:
                raise _unknown(key)
        built = {}
        for s, sec_cls in SECTIONS.items():
            fmap = {f.name: f for f in fields(sec_cls)}
            built[s] = sec_cls(**{k: coerce(k, v, fmap[k]) for k, v in per_section[s].items()})
        cfg = cls(**built)
        cfg._check_cross()
        return cfg

    def _check_cross(self) -> None:
        if self.model.arch in ("vit_mini", "small_cnn") and self.data.dataset == "synthetic":
            raise ConfigError(f"arch: {self.model.arch} needs image data (digits, cifar10, cifar100 or an npz of "
                              "images); synthetic gives vectors")
        if self.model.arch == "cnn1d" and self.data.dataset in ("digits", "cifar10", "cifar100"):
            raise ConfigError(f"arch: cnn1d needs signals (mnist1d, synthetic or an npz of (C, T) examples); "
                              f"{self.data.dataset} gives images")
        if self.model.arch == "vit_mini" and self.model.d % self.model.heads:
            raise ConfigError(f"heads: {self.model.heads} does not divide d={self.model.d}")
        if not self.model.block_ln and self.model.arch != "resmlp":
            raise ConfigError(f"block_ln: only resmlp's blocks can drop their LayerNorm, not {self.model.arch}'s")
        if self.data.dataset == "toy_lq" and self.data.random_targets:
            raise ConfigError("random_targets: draws random class labels; toy_lq has target vectors")
        if self.data.dataset in ("cifar10", "cifar100", "npz") and not self.data.data_dir:
            raise ConfigError(f"data_dir: dataset {self.data.dataset!r} needs --data-dir")
        self._check_sizes()
        self._check_lineage()

    def _check_lineage(self) -> None:
        t, lin, ex = self.train, self.lineage, self.exploit
        kept = number_list("keep_epochs", t.keep_epochs, int, lo=1)
        if kept and max(kept) > t.epochs:
            raise ConfigError(f"keep_epochs: epoch {max(kept)} is beyond epochs={t.epochs}")
        number_list("exploit_steps", ex.exploit_steps, int, lo=1, need=True)
        number_list("exploit_etas", ex.exploit_etas, float, lo=0.0, need=True)
        if lin.parent_run and lin.parent_epoch < 1:
            raise ConfigError("parent_epoch: a branch needs the parent's epoch to start from (>= 1)")
        if ex.exploitability and not lin.parent_run:
            raise ConfigError("exploitability: measures a snapshot; set parent_run and parent_epoch")
        if lin.parent_epoch and not lin.parent_run:
            raise ConfigError(f"parent_epoch: {lin.parent_epoch} given without parent_run")
        if lin.parent_run and not ex.exploitability and t.epochs <= lin.parent_epoch:
            raise ConfigError(f"epochs: a branch from epoch {lin.parent_epoch} trains up to epochs={t.epochs}, "
                              "which must be later (epochs counts from the trunk's start)")

    def _check_sizes(self, n_classes: int | None = None) -> None:
        """ConfigError for a synthetic dataset or a model whose float32 tensors would exceed MAX_TENSOR_BYTES;
        `n_classes`: the dataset's, where its files say it (else the knob's)."""
        m, dc = self.model, self.data
        gib = 2**30
        if dc.dataset in ("synthetic", "toy_lq"):
            n = (dc.n_train or 10_000) + (dc.n_test or 2_000)
            widest = max(dc.input_dim, dc.teacher_width if dc.teacher_depth else 0, dc.n_classes)
            if 4 * n * widest > MAX_TENSOR_BYTES:
                raise ConfigError(f"n_train/n_test: synthetic data of {n} examples x {widest} features (the widest "
                                  f"of input_dim, teacher_width, n_classes) needs about {4 * n * widest / gib:.0f} "
                                  f"GiB (limit {MAX_TENSOR_BYTES // gib} GiB)")
        hidden = max(1, round(m.mlp_ratio * m.d))
        params = m.L * (2 * m.d * hidden + m.d * m.d) + m.d * (n_classes or dc.n_classes) * (m.L + 2)
        if 4 * params > MAX_TENSOR_BYTES:
            raise ConfigError(f"d/L/n_classes: a model of about {params:.2g} parameters needs about "
                              f"{4 * params / gib:.0f} GiB (limit {MAX_TENSOR_BYTES // gib} GiB)")

    def check_model_size(self, n_classes: int) -> None:
        """ConfigError when the model for a dataset of `n_classes` classes would exceed MAX_TENSOR_BYTES."""
        self._check_sizes(n_classes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def flat(self) -> dict:
        """{key: value} over all sections (keys are unique)."""
        return {k: v for sec in self.to_dict().values() for k, v in sec.items()}

    def replace(self, **flat_overrides) -> Config:
        return Config.from_dict({**self.flat(), **flat_overrides})

    def key(self) -> str:
        """Stable short hash of the whole config: the identity of a trial across restarts."""
        return stable_hash(self.to_dict())


def field_docs() -> list[tuple[str, str, dataclasses.Field]]:
    """(section, key, field) for every knob, in declaration order."""
    return [(s, f.name, f) for s, cls in SECTIONS.items() for f in fields(cls)]
