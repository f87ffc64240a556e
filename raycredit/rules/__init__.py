"""The learning-rule registry: one file per rule, all behind `raycredit.rules.base.Rule`."""

from raycredit.errors import ConfigError
from raycredit.rules.base import Rule
from raycredit.rules.bp import BP
from raycredit.rules.credit_bridge import CreditBridge
from raycredit.rules.dfa import DFA
from raycredit.rules.ep import EP
from raycredit.rules.fa import FA
from raycredit.rules.frozen import Frozen
from raycredit.rules.scaffold import Scaffold
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
}


def get_rule_class(name: str) -> type[Rule]:
    if name not in RULES:
        raise ConfigError(f"rule: unknown rule {name!r}; valid rules: {', '.join(RULES)}")
    return RULES[name]


def build_rule(cfg, model, n_classes: int) -> Rule:
    return get_rule_class(cfg.rule.rule)(cfg, model, n_classes)
