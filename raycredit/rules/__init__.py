"""The learning-rule registry: one file per rule, all behind `raycredit.rules.base.Rule`."""

from raycredit.config import Config, register_check, register_rule_defaults
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


def validate(cfg: Config) -> None:
    """ConfigError when cfg's rule is unknown, does not support its architecture, or refuses its knobs (each
    rule's `check_config`). Every Config.from_dict runs it (registered below)."""
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


register_check(validate)
for _name, _cls in RULES.items():
    register_rule_defaults(_name, _cls.defaults)


def build_rule(cfg, model, n_classes: int) -> Rule:
    return get_rule_class(cfg.rule.rule)(cfg, model, n_classes)
