"""The learning-rule registry: one file per rule, all behind `raycredit.rules.base.Rule`.

Where a config meets its rule: `make_config` builds a Config with the rule's own defaults and checks it
against the rule; `build_rule` checks again (a config built by `Config.from_dict` or `replace` has not been);
`applied` keeps, of a config's knobs, those that apply to its rule (what its run logs, what tables show).
"""

from raycredit.config import RULE_KNOBS, SECTIONS, Config
from raycredit.errors import ConfigError
from raycredit.rules.base import LocalRule, Rule
from raycredit.rules.bp import BP
from raycredit.rules.credit_bridge import CreditBridge
from raycredit.rules.dfa import DFA
from raycredit.rules.ep import EP
from raycredit.rules.fa import FA
from raycredit.rules.frozen import Frozen
from raycredit.rules.kolen_pollack import KolenPollack
from raycredit.rules.scaffold import Scaffold
from raycredit.rules.sign_symmetry import SignSymmetry
from raycredit.rules.state_bridge import StateBridge
from raycredit.rules.vector_field import VectorField

RULES: dict[str, type[Rule]] = {
    "bp": BP,
    "fa": FA,
    "dfa": DFA,
    "frozen": Frozen,
    "ep": EP,
    "state_bridge": StateBridge,
    "vector_field": VectorField,
    "credit_bridge": CreditBridge,
    "scaffold": Scaffold,
    "sign_symmetry": SignSymmetry,
    "kolen_pollack": KolenPollack,
}


def get_rule_class(name: str) -> type[Rule]:
    if name not in RULES:
        raise ConfigError(f"rule: unknown rule {name!r}; valid rules: {', '.join(RULES)}")
    return RULES[name]


def make_config(d: dict) -> Config:
    """The Config of a flat or nested dict (`Config.from_dict`) with its rule's own `defaults` for the knobs the
    dict does not give (Kolen-Pollack brings the weight decay that aligns its feedback) and the rule knobs that
    it does not read at their defaults, checked against the rule (`validate`). The constructor of every config a
    user describes: flags, presets, Python."""
    cfg = Config.from_dict(d)
    given = {k for key, v in d.items() for k in (v if key in SECTIONS and isinstance(v, dict) else (key,))}
    defaults = {k: v for k, v in get_rule_class(cfg.rule.rule).defaults.items() if k not in given}
    cfg = cfg.replace(**defaults) if defaults else cfg
    # a knob that the rule does not read at its default: a grid's bp under two penalty_lam is one run
    fields = SECTIONS["rule"].__dataclass_fields__
    unused = {k: fields[k].default for k in unused_knobs(cfg.rule.rule, cfg.exploit.exploitability)
              if getattr(cfg.rule, k) != fields[k].default}
    cfg = cfg.replace(**unused) if unused else cfg
    validate(cfg)
    return cfg


def unused_knobs(rule: str, exploitability: bool = False) -> frozenset[str]:
    """The rule section's knobs that a run of `rule` does not read (none for a rule this version does not know);
    an exploitability measurement reads credit_norm whatever its rule (`raycredit.exploitability`)."""
    if rule not in RULES:
        return frozenset()
    used = RULES[rule].uses() | ({"credit_norm"} if exploitability else set())
    return RULE_KNOBS - used


def applied(knobs: dict) -> dict:
    """The flat knobs (`Config.flat`, or a run's params, whose values are text) without those that the run
    does not read: a bp run has no credit_norm, whatever the search around it set."""
    unused = unused_knobs(str(knobs.get("rule", "")), str(knobs.get("exploitability", False)) == "True")
    return {k: v for k, v in knobs.items() if k not in unused}


def validate(cfg: Config) -> None:
    """ConfigError when cfg's rule is unknown, does not support its architecture, or refuses its knobs (each
    rule's `check_config`)."""
    rule_cls = get_rule_class(cfg.rule.rule)
    if cfg.model.arch not in rule_cls.architectures:
        raise ConfigError(f"rule: {cfg.rule.rule!r} supports architectures {', '.join(rule_cls.architectures)}, "
                          f"not {cfg.model.arch!r}")
    if cfg.train.freeze_model and not issubclass(rule_cls, LocalRule):
        raise ConfigError(f"freeze_model: {cfg.rule.rule!r} has no auxiliary nets to train on a frozen model (rules "
                          f"that do: {', '.join(k for k, v in RULES.items() if issubclass(v, LocalRule))})")
    if cfg.exploit.exploitability and cfg.rule.rule == "frozen":
        raise ConfigError("exploitability: 'frozen' has no credit to step along")
    rule_cls.check_config(cfg)


def build_rule(cfg: Config, model, n_classes: int) -> Rule:
    validate(cfg)
    return get_rule_class(cfg.rule.rule)(cfg, model, n_classes)
