import pytest

from raycredit.config import Config
from raycredit.errors import ConfigError
from raycredit.rules import make_config


def test_flat_and_nested_round_trip():
    cfg = make_config({"rule": "fa", "d": 512, "L": 2, "lr": 1})
    assert cfg.rule.rule == "fa" and cfg.model.d == 512 and cfg.model.L == 2
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert Config.from_dict(cfg.to_dict()) == cfg
    assert Config.from_dict(cfg.flat()) == cfg


def test_key_is_stable_and_sensitive():
    a, b = make_config({"seed": 1}), make_config({"seed": 1})
    assert a.key() == b.key()
    assert a.key() != make_config({"seed": 2}).key()


@pytest.mark.parametrize("bad, words", [
    ({"lrr": 0.1}, ["unknown config key 'lrr'", "lr"]),
    ({"model": {"lr": 0.1}}, ["lr"]),
    ({"d": "256"}, ["d:", "expected int"]),
    ({"d": 2.5}, ["d:", "expected int"]),
    ({"residual_add": 1}, ["residual_add", "expected bool"]),
    ({"epochs": True}, ["epochs", "expected int"]),
    ({"penalty_lam": -1e-3}, ["penalty_lam", ">= 0"]),
    ({"alpha": 1.5}, ["alpha", "<= 1"]),
    ({"lr": 0.0}, ["lr", "> 0"]),
    ({"d": 0}, ["d:", ">= 1"]),
    ({"rule": "backprop"}, ["unknown rule 'backprop'", "bp, fa, dfa, frozen"]),
    ({"optimizer": "lion"}, ["optimizer", "adam"]),
    ({"dataset": "cifar10"}, ["data_dir"]),
    ({"lr": float("nan")}, ["lr", "NaN"]),
    ({"vf_dirs": 0}, ["vf_dirs", ">= 1"]),
    ({"warmup_ratio": 1.0}, ["warmup_ratio", "< 1"]),
    ({"warmup_ratio": -0.1}, ["warmup_ratio", ">= 0"]),
    ({"s_type": "eT_h"}, ["s_type", "eT, deltaL, eT_hL, deltaL_hL"]),
    ({"ep_beta": 0.0}, ["ep_beta", "> 0"]),
    ({"ep_credit": "both"}, ["ep_credit"]),
])
def test_bad_values_name_the_key(bad, words):
    with pytest.raises(ConfigError) as e:
        make_config(bad)
    for w in words:
        assert w in str(e.value)


def test_frozen_dataclasses_are_immutable():
    cfg = Config()
    with pytest.raises(AttributeError):
        cfg.model.d = 3
