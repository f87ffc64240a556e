"""Post-hoc diagnostics of a checkpoint (`raycredit diagnose`): every diagnostic of raycredit.diagnostics recomputed
from the saved model and rule state (loss_decrease from its history), and the null calibration of feedback-matrix
rules.

Null calibration (as in the reference study): the trained model's deep_cos when the rule's feedback
matrices B are replaced by freshly drawn ones. If the trained network had aligned to its own B, the
training B gives a clearly higher deep_cos than fresh draws do; similar values mean the alignment is not
specific to the matrices it was trained with. It runs for every rule that holds feedback matrices (fa, dfa,
scaffold, and the DFA warm-up of credit_bridge and vector_field, where fresh draws show whether B still
shapes the credit after the warm-up).
"""

from __future__ import annotations

from raycredit.data import Data
from raycredit.diagnostics import diagnose
from raycredit.rules import build_rule
from raycredit.train import diag_seed, loss_decrease, restore

NULL_SEED_BASE = 1_000_000  # seeds of the fresh draws: train seeds are far below this


def rediagnose(ckpt: dict, data: Data | None = None, null_draws: int = 0) -> tuple[dict, list[float] | None]:
    """(the diagnostics at the checkpoint's epoch, deep_cos under each of `null_draws` fresh feedback draws or
    None when the rule has no feedback matrices)."""
    cfg, model, rule, data = restore(ckpt, data)
    px, py = data.x_test[: cfg.diag.probe_size], data.y_test[: cfg.diag.probe_size]
    kw = dict(seed=diag_seed(cfg, ckpt["epoch"]), h_norm_init=ckpt["h_norm_init"])
    metrics = diagnose(model, rule, px, py, cfg.diag, **kw)
    now = [r for r in ckpt["history"] if r.get("epoch") == ckpt["epoch"]]
    if now:  # the history-based functional metric, from the checkpoint's own history
        metrics.update(loss_decrease(cfg, ckpt["epoch"], now[0]["train_loss"], ckpt["history"]))
    state = rule.state_dict()
    feedback = [k for k in state if k.startswith("B.")]
    if not feedback or null_draws == 0:
        return metrics, None
    null = []
    for k in range(null_draws):
        fresh = build_rule(cfg.replace(seed=NULL_SEED_BASE + k), model, data.n_classes).state_dict()
        rule.load_state_dict({**state, **{name: fresh[name] for name in feedback}})
        null.append(diagnose(model, rule, px, py, cfg.diag, **kw)["deep_cos"])
    rule.load_state_dict(state)
    return metrics, null
