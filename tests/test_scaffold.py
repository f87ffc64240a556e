"""scaffold: blend arithmetic, schedule (warm-up, prefit, freeze, decay), exactness against dfa, resume."""

import copy

import pytest
import torch

from raycredit.errors import ConfigError
from raycredit.rules import make_config
from raycredit.rules.dfa import dfa_credits
from raycredit.train import train

from test_learned_rules import double_setup


def states(cfg, checkpoint=None):
    """Per-epoch checkpoints of a run, {epoch: checkpoint} (copied: state_dict() holds live tensors)."""
    out = {}
    train(cfg, checkpoint=checkpoint, on_epoch=lambda e, m, fn: out.update({e: copy.deepcopy(fn())}))
    return out


def aux_params(rule_state):
    return {k: v for k, v in rule_state.items() if k.startswith(("net.", "vec"))}


@pytest.mark.parametrize("kind", ["vector_field", "gaussian_noise"])
def test_alpha_zero_trains_exactly_like_dfa(tiny, kind):
    scaffold = states(make_config({**tiny, "rule": "scaffold", "blend_alpha": 0.0, "aux_kind": kind,
                                        "warmup_ratio": 0.0, "epochs": 3}))
    dfa = states(make_config({**tiny, "rule": "dfa", "epochs": 3}))
    for k, v in dfa[3]["model"].items():
        assert torch.equal(v, scaffold[3]["model"][k]), k
    assert [h["test_loss"] for h in dfa[3]["history"]] == [h["test_loss"] for h in scaffold[3]["history"]]
    if kind == "vector_field":  # the auxiliary did learn meanwhile
        assert not torch.equal(scaffold[1]["rule"]["net.0.weight"], scaffold[3]["rule"]["net.0.weight"])


def test_blend_is_alpha_aux_rescaled_to_dfa_plus_dfa(tiny):
    _, model, rule, hs, logits, y, g = double_setup(tiny, rule="scaffold", blend_alpha=0.3, warmup_ratio=0.0)
    rule.start_epoch(1, 2)
    s = rule.code(model, hs, logits, y)
    for l, (a, d) in enumerate(zip(rule.credits(model, hs, logits, y), dfa_credits(rule.B, logits, y), strict=True)):
        aux = rule.field(hs[l].detach(), l, s)
        scale = d.norm(dim=-1, keepdim=True) / aux.norm(dim=-1, keepdim=True)
        torch.testing.assert_close(a, 0.3 * aux * scale + 0.7 * d)


def test_schedule_warmup_prefit_blend_freeze_decay(tiny):
    _, model, rule, *_ = double_setup(tiny, rule="scaffold", epochs=10, warmup_ratio=0.2, prefit_epochs=2,
                                      aux_kind="vector_field", blend_alpha=0.8, freeze_after=2, decay_to=0.0)
    seen = []
    for e in range(1, 11):
        rule.start_epoch(e, 10)
        seen.append((rule.model_learns, rule.blending, rule.aux_learns, round(rule.alpha, 6)))
    assert seen[:2] == [(True, False, False, 0.8)] * 2  # warm-up: DFA, aux idle
    assert seen[2:4] == [(False, False, True, 0.8)] * 2  # prefit: only the aux learns
    assert seen[4:6] == [(True, True, True, 0.8)] * 2  # blend, aux learning
    # frozen after 2 blended epochs; alpha decays linearly to 0 by epoch 10
    assert [s[2] for s in seen[6:]] == [False] * 4
    assert [s[3] for s in seen[6:]] == [0.6, 0.4, 0.2, 0.0]


def test_prefit_moves_only_the_aux_and_freeze_after_stops_it(tiny):
    ck = states(make_config({**tiny, "rule": "scaffold", "epochs": 5, "warmup_ratio": 0.2, "prefit_epochs": 1,
                                  "aux_kind": "vector_field", "freeze_after": 1}))
    model = {e: c["model"] for e, c in ck.items()}
    aux = {e: aux_params(c["rule"]) for e, c in ck.items()}
    same = {e: all(torch.equal(aux[e][k], aux[e + 1][k]) for k in aux[e]) for e in range(1, 5)}
    # epoch 1 warm-up (aux idle), 2 prefit, 3 blended and learning, 4-5 frozen
    assert all(torch.equal(model[1][k], model[2][k]) for k in model[1])
    assert not all(torch.equal(model[2][k], model[3][k]) for k in model[2])
    assert same == {1: False, 2: False, 3: True, 4: True}


def test_scaffold_resumes_exactly(tiny):
    cfg = make_config({**tiny, "rule": "scaffold", "epochs": 4, "warmup_ratio": 0.25,
                            "aux_kind": "gaussian_noise"})
    whole = states(cfg)
    resumed = states(cfg, checkpoint=whole[2])
    for k, v in whole[4]["model"].items():
        assert torch.equal(v, resumed[4]["model"][k]), k
    vf = make_config({**tiny, "rule": "scaffold", "epochs": 3, "warmup_ratio": 0.0,
                           "aux_kind": "shuffled_trainable"})
    whole = states(vf)
    resumed = states(vf, checkpoint=whole[1])
    for k, v in whole[3]["rule"].items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, resumed[3]["rule"][k]), k


@pytest.mark.parametrize("bad, msg", [
    (dict(blend_alpha=1.5), "blend_alpha"),
    (dict(blend_alpha=-0.1), "blend_alpha"),
    (dict(aux_kind="noise"), "aux_kind"),
    (dict(decay_to=-0.5, freeze_after=1), "decay_to"),
    (dict(decay_to=0.0), "freeze_after"),
    (dict(aux_kind="random_trainable", prefit_epochs=2), "prefit_epochs"),
    (dict(aux_kind="gaussian_noise", freeze_after=1), "gaussian_noise"),
    (dict(aux_kind="vector_field", prefit_epochs=9, epochs=10), "leave no blended epoch"),
    (dict(freeze_after=-2), "freeze_after"),
])
def test_bad_scaffold_knobs_are_rejected(tiny, bad, msg):
    with pytest.raises(ConfigError, match=msg):
        make_config({**tiny, "rule": "scaffold", **bad})
