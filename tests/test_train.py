"""train(cfg) without Ray: determinism, exact resume, learning, divergence."""

import math

import pytest
import torch

from raycredit.checkpoint import load_checkpoint, save_checkpoint
from raycredit.rules import make_config
from raycredit.train import train


def strip_time(history):
    return [{k: v for k, v in h.items() if k != "time_s"} for h in history]


def same(a, b):
    """Equal, with NaN == NaN."""
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def assert_histories_equal(h1, h2):
    h1, h2 = strip_time(h1), strip_time(h2)
    assert len(h1) == len(h2)
    for a, b in zip(h1, h2, strict=True):
        assert a.keys() == b.keys()
        bad = {k: (a[k], b[k]) for k in a if not same(a[k], b[k])}
        assert not bad, bad


def test_same_seed_same_metrics_and_other_seed_differs(tiny):
    cfg = make_config({**tiny, "rule": "fa"})
    assert_histories_equal(train(cfg)["history"], train(cfg)["history"])
    other = train(cfg.replace(seed=1))["history"]
    assert other[-1]["test_loss"] != train(cfg)["history"][-1]["test_loss"]


@pytest.mark.parametrize("rule", ["dfa", "fa", "bp", "ep", "state_bridge", "vector_field", "credit_bridge"])
def test_resume_is_bit_identical(tiny, tmp_path, rule):
    """4 epochs in one go == 2 epochs + checkpoint file + restore + 2 epochs, exactly."""
    cfg = make_config({**tiny, "rule": rule, "epochs": 4, "diag_every": 1})
    states, resumed_states = {}, {}
    full = train(cfg, on_epoch=lambda e, m, fn: states.__setitem__(e, fn()))
    path = tmp_path / "half.pt"
    train(cfg.replace(epochs=2), on_epoch=lambda e, m, fn: save_checkpoint(fn(), path) if e == 2 else None)
    resumed = train(cfg, checkpoint=load_checkpoint(path),
                    on_epoch=lambda e, m, fn: resumed_states.__setitem__(e, fn()))
    assert_histories_equal(full["history"], resumed["history"])
    assert set(resumed_states) == {3, 4}
    for part in ("model", "rule"):
        for name, t in states[4][part].items():
            assert torch.equal(t, resumed_states[4][part][name]), (part, name)


def test_checkpoint_holds_feedback_and_loads_weights_only(tiny, tmp_path):
    cfg = make_config({**tiny, "rule": "dfa", "epochs": 1})
    path = tmp_path / "c.pt"
    train(cfg, on_epoch=lambda e, m, fn: save_checkpoint(fn(), path))
    ckpt = torch.load(path, weights_only=True)
    assert [ckpt["rule"][f"B.{l}"].shape for l in range(cfg.model.L + 1)] == [(10, cfg.model.d)] * (cfg.model.L + 1)
    assert ckpt["epoch"] == 1 and len(ckpt["history"]) == 1


@pytest.mark.science
def test_bp_clearly_beats_frozen_and_reference_dfa_on_synthetic():
    """The synthetic default rewards depth (BP >= frozen + 5 points at the smoke budget), and the reference
    study's DFA (with credit normalization) falls well below BP there."""
    base = dict(dataset="synthetic", alpha=1.0, d=64, L=2, n_train=4000, n_test=1000, epochs=8,
                probe_size=64, rho_dirs=4, diag_every=8, device="cpu")
    acc = {r: train(make_config({**base, "rule": r, **kw}))["final"]["test_acc"]
           for r, kw in (("bp", {}), ("frozen", {}), ("dfa", {"credit_norm": True}))}
    assert acc["bp"] >= acc["frozen"] + 0.05 and acc["bp"] > acc["dfa"] + 0.05, acc


def test_divergence_stops_cleanly_and_withholds_the_checkpoint(tiny):
    cfg = make_config({**tiny, "rule": "bp", "optimizer": "sgd", "lr": 1e6, "clip_norm": 0.0, "epochs": 5})
    seen = []
    result = train(cfg, on_epoch=lambda e, m, fn: seen.append((e, m["diverged"], fn is None)))
    assert result["final"]["diverged"] == 1.0
    assert len(result["history"]) < 5
    assert seen[-1][1:] == (1.0, True)
    assert all(d == 0.0 and not none for _, d, none in seen[:-1])


def test_random_targets_give_chance_accuracy(tiny):
    cfg = make_config({**tiny, "rule": "bp", "random_targets": True, "epochs": 3})
    assert abs(train(cfg)["final"]["train_acc"] - 0.1) < 0.06


def test_history_has_every_diagnostic(tiny):
    cfg = make_config({**tiny, "rule": "fa", "epochs": 2, "diag_every": 2})
    h = train(cfg)["history"]
    assert "deep_cos" not in h[0] and "test_acc" in h[0]
    L = cfg.model.L
    for k in ["deep_cos", "deep_rho", "mode1a", "mode1b", "diverged", "train_loss", "test_loss", "test_acc"] + [
            f"{m}/l{i}" for m in ("cos", "rho", "nudge", "h_norm", "g_norm") for i in range(L + 1)]:
        assert k in h[1] and isinstance(h[1][k], float), k


class Payload:
    """Unpickling this would run code: weights_only loading must refuse it."""

    def __reduce__(self):
        return (print, ("PAYLOAD RAN",))


def test_checkpoints_are_never_unpickled(tmp_path, capsys):
    from raycredit.checkpoint import CHECKPOINT_FORMAT
    from raycredit.errors import UserError

    path = tmp_path / "evil.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "model": Payload()}, path)
    with pytest.raises(UserError, match="cannot read checkpoint"):
        load_checkpoint(path)
    assert "PAYLOAD RAN" not in capsys.readouterr().out
    (tmp_path / "short.pt").write_bytes(path.read_bytes()[:40])
    with pytest.raises(UserError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "short.pt")


BF16_ACC_TOL = 0.02  # |test_acc(bf16) - test_acc(fp32)| for bp; README and docs/PERFORMANCE.md state it


def test_bf16_autocast_agrees_with_fp32_on_bp_accuracy(tiny):
    cfg = make_config({**tiny, "rule": "bp", "epochs": 3, "n_train": 1024})
    fp32, bf16 = train(cfg)["final"], train(cfg.replace(precision="bf16"))["final"]
    assert fp32["train_loss"] != bf16["train_loss"], "the bf16 path did not run"
    assert abs(fp32["test_acc"] - bf16["test_acc"]) <= BF16_ACC_TOL, (fp32["test_acc"], bf16["test_acc"])
    assert fp32["test_acc"] > 0.3  # both learned: chance is 0.1


def test_compile_flag_compiles_the_training_step_and_changes_nothing_else(tiny, monkeypatch):
    """Wiring only (compiling costs minutes on CPU): torch.compile receives the rule's loss, and with an
    identity compile the run equals the eager one. benchmarks/throughput.py compares real compiled runs."""
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compiled.append(fn) or fn)
    cfg = make_config({**tiny, "rule": "dfa"})
    eager = train(cfg)["history"]
    again = train(cfg.replace(compile=True))["history"]
    assert [c.__name__ for c in compiled] == ["loss"] and compiled[0].__self__.__class__.__name__ == "DFA"
    drop = lambda h: {k: v for k, v in h.items() if k != "time_s"}  # noqa: E731
    assert [drop(h) for h in again] == [drop(h) for h in eager]


@pytest.mark.parametrize("rule", ["fa", "state_bridge"])
def test_checkpoints_handed_out_are_snapshots(tiny, rule):
    """Checkpoints kept from every epoch hold their own epoch's state, not the live weights: epoch 1's equals
    the checkpoint of a 1-epoch run exactly (model, rule, optimizer, history)."""
    kept = []
    cfg = make_config({**tiny, "rule": rule, "epochs": 3})
    train(cfg, on_epoch=lambda e, m, fn: kept.append(fn()))
    once = []
    train(cfg.replace(epochs=1), on_epoch=lambda e, m, fn: once.append(fn()))
    first = kept[0]
    assert [c["epoch"] for c in kept] == [1, 2, 3] and len(first["history"]) == 1
    for part in ("model", "rule"):
        assert first[part].keys() == once[0][part].keys()
        assert all(torch.equal(first[part][k], once[0][part][k]) for k in first[part]), part
    assert any(not torch.equal(first["model"][k], kept[2]["model"][k]) for k in first["model"])
    s1, s0 = first["optimizer"]["state"], once[0]["optimizer"]["state"]
    assert all(torch.equal(s1[i][k], s0[i][k]) for i in s1 for k in s1[i] if torch.is_tensor(s1[i][k]))


def test_accuracies_are_exact_fractions_not_float32_noise(tiny):
    """534/1000 is logged as 0.534 (float64 sums), not float32's 0.53399997."""
    h = train(make_config({**tiny, "rule": "dfa", "n_test": 250}))["history"][-1]
    assert h["test_acc"] == round(h["test_acc"] * 250) / 250
    assert h["train_acc"] == round(h["train_acc"] * 512) / 512
