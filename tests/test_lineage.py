"""Branches, frozen-snapshot credit recovery and snapshot exploitability, without Ray (raycredit.lineage,
raycredit.exploitability, the scaffold's hand-off knobs, the searches' Branch expansion)."""

import copy
import math

import pytest
import torch

from raycredit.checkpoint import run_checkpoint_path
from raycredit.config import Config
from raycredit.data import load_data
from raycredit.errors import ConfigError, UserError
from raycredit.exploitability import exploitability, measure
from raycredit.lineage import Branch, Parent, check_branch, check_lineage, lineage_levels
from raycredit.population import train_population
from raycredit.rules import make_config
from raycredit.search import Preset, expand
from raycredit.start import branch_start, fetch_parent
from raycredit.train import restore, train

SMALL = dict(d=16, L=2, n_train=256, n_test=128, epochs=5, batch_size=64, probe_size=32, rho_dirs=2, device="cpu")


def run(cfg: Config, data, start=None):
    """(history without wall times, {epoch: checkpoint})."""
    ckpts = {}
    result = train(cfg, checkpoint=start, data=data, on_epoch=lambda e, m, f: ckpts.__setitem__(e, f()))
    return [{k: v for k, v in m.items() if k != "time_s"} for m in result["history"]], ckpts


def branch(cfg: Config, parent: dict, data, **changes) -> Config:
    b = cfg.replace(**{"parent_run": "parent.pt", "parent_epoch": parent["epoch"], "keep_epochs": "", **changes})
    return b, branch_start(b, parent, data.in_shape, data.n_classes)


@pytest.fixture(scope="module")
def dfa_trunk():
    cfg = make_config({**SMALL, "rule": "dfa", "credit_norm": True, "keep_epochs": "2"})
    data = load_data(cfg.data)
    history, ckpts = run(cfg, data)
    return cfg, data, history, ckpts


def test_a_branch_that_changes_nothing_is_the_uninterrupted_run(dfa_trunk):
    cfg, data, history, ckpts = dfa_trunk
    parent = copy.deepcopy(ckpts[2])
    b, start = branch(cfg, ckpts[2], data)
    for k, v in start["model"].items():  # the branch's first epoch starts from exactly the parent's weights
        assert torch.equal(v, parent["model"][k])
    before = copy.deepcopy(start)
    got, branch_ckpts = run(b, data, start)
    # training from a checkpoint leaves it as it was (torch's optimizer would otherwise update its tensors)
    assert torch.equal(start["optimizer"]["state"][0]["step"], before["optimizer"]["state"][0]["step"])
    assert torch.equal(start["optimizer"]["state"][0]["exp_avg"], before["optimizer"]["state"][0]["exp_avg"])
    assert got == history  # epochs 1-2 are the parent's, 3-5 recomputed: the same, bit for bit
    for k, v in ckpts[5]["model"].items():
        assert torch.equal(v, branch_ckpts[5]["model"][k])
    adam = [c[5]["optimizer"]["state"][0]["exp_avg"] for c in (ckpts, branch_ckpts)]
    assert torch.equal(*adam)
    for k, v in parent["model"].items():  # the parent's checkpoint is untouched
        assert torch.equal(v, ckpts[2]["model"][k])


def test_a_scaffold_branch_from_a_dfa_trunk_equals_a_scaffold_run_from_scratch(dfa_trunk):
    """The hand-off carries the weights, the batch order and Adam's state: the scaffold's warm-up (DFA) is the
    trunk, step for step; its auxiliary net starts as a scaffold run's does."""
    cfg, data, _, ckpts = dfa_trunk
    scratch = cfg.replace(rule="scaffold", aux_kind="random_trainable", blend_alpha=0.5, warmup_ratio=0.5,
                          keep_epochs="")  # int(0.5 * 5) = 2 warm epochs
    want, want_ckpts = run(scratch, data)
    b, start = branch(scratch, ckpts[2], data)
    got, got_ckpts = run(b, data, start)
    assert got == want
    assert all(torch.equal(v, got_ckpts[5]["rule"][k]) for k, v in want_ckpts[5]["rule"].items() if torch.is_tensor(v))


def test_a_branch_takes_its_own_step_size_and_keeps_the_optimizer_state(dfa_trunk):
    cfg, data, _, ckpts = dfa_trunk
    b, start = branch(cfg, ckpts[2], data, lr=0.01, rule="fa")
    assert start["optimizer"]["param_groups"][0]["lr"] == 0.01
    assert torch.equal(start["optimizer"]["state"][0]["exp_avg"], ckpts[2]["optimizer"]["state"][0]["exp_avg"])
    b, start = branch(cfg, ckpts[2], data, optimizer="sgd")
    assert start["optimizer"]["state"] == {}  # another optimizer's state means nothing to SGD


def test_a_branch_may_not_change_the_model_the_data_or_the_seed(dfa_trunk):
    cfg, data, _, ckpts = dfa_trunk
    for change in ({"d": 32}, {"alpha": 0.5}, {"seed": 1}):
        with pytest.raises(ConfigError, match=next(iter(change))):
            check_branch(cfg.replace(**change), cfg)
    with pytest.raises(UserError, match="holds epoch 2, not parent_epoch=3"):
        branch_start(cfg.replace(parent_run="x.pt", parent_epoch=3), ckpts[2], data.in_shape, data.n_classes)


@pytest.mark.parametrize("knobs, message", [
    ({"parent_epoch": 2}, "without parent_run"),
    ({"parent_run": "x.pt"}, "parent_epoch"),
    ({"parent_run": "x.pt", "parent_epoch": 5}, "must be later"),
    ({"keep_epochs": "2,9"}, "beyond epochs"),
    ({"keep_epochs": "two"}, "comma-separated"),
    ({"exploitability": True}, "set parent_run"),
    ({"exploit_etas": "0.1,-1", "exploitability": True, "parent_run": "x.pt", "parent_epoch": 1}, "> 0"),
    ({"freeze_model": True, "rule": "bp"}, "no auxiliary nets"),
    ({"rule": "scaffold", "blend_layers": 3}, "blend_layers"),
    ({"rule": "scaffold", "refit_every": 2, "aux_kind": "gaussian_noise"}, "refit_every"),
])
def test_lineage_knobs_are_validated(knobs, message):
    with pytest.raises(ConfigError, match=message):
        make_config({**SMALL, **knobs})


def test_a_parent_on_disk_is_found_by_folder_and_epoch(tmp_path, dfa_trunk):
    from raycredit.checkpoint import save_checkpoint

    cfg, _, _, ckpts = dfa_trunk
    (tmp_path / "epoch-2").mkdir()
    save_checkpoint(ckpts[2], run_checkpoint_path(tmp_path, 2))
    save_checkpoint(ckpts[5], run_checkpoint_path(tmp_path))
    for epoch in (2, 5):
        _, got = fetch_parent(Parent.of(cfg.replace(parent_run=str(tmp_path), parent_epoch=epoch, epochs=6)), tmp_path)
        assert got["epoch"] == epoch
    with pytest.raises(UserError, match="holds epoch 5, not parent_epoch=3"):
        fetch_parent(Parent.of(cfg.replace(parent_run=str(tmp_path), parent_epoch=3)), tmp_path)
    with pytest.raises(UserError, match="run key"):
        fetch_parent(Parent.of(cfg.replace(parent_run="0123456789abcdef", parent_epoch=3)), tmp_path)


@pytest.fixture(scope="module")
def bp_snapshot():
    cfg = make_config({**SMALL, "rule": "bp", "d": 64, "L": 4, "alpha": 1.0, "n_train": 2000, "n_test": 500,
                            "epochs": 6, "batch_size": 128, "probe_size": 128, "rho_dirs": 8})
    data = load_data(cfg.data)
    _, ckpts = run(cfg, data)
    return cfg, data, ckpts[6]


@pytest.mark.science
def test_credit_recovery_on_a_frozen_bp_snapshot_orders_the_estimators_as_the_seeds_5b(bp_snapshot):
    """vector_field and state_bridge fitted on the frozen snapshot recover the gradient's direction; DFA's fixed
    projection and the shuffled-target control do not; the model's weights never move."""
    cfg, data, snap = bp_snapshot
    final = {}
    for name, knobs in {"dfa": {"rule": "dfa"}, "vector_field": {"rule": "vector_field", "warmup_ratio": 0.0},
                        "state_bridge": {"rule": "state_bridge"},
                        "shuffled": {"rule": "vector_field", "warmup_ratio": 0.0, "shuffle_control": True}}.items():
        b, start = branch(cfg, snap, data, freeze_model=True, epochs=12, **knobs)
        history, ckpts = run(b, data, start)
        assert all(torch.equal(v, snap["model"][k]) for k, v in ckpts[12]["model"].items())
        assert history[-1]["test_acc"] == history[5]["test_acc"]
        final[name] = history[-1]["deep_cos"]
    assert final["vector_field"] > 0.25 and final["state_bridge"] > 0.25, final
    assert abs(final["dfa"]) < 0.1 and abs(final["shuffled"]) < 0.1, final


def test_frozen_model_population_trains_only_the_auxiliary_nets(bp_snapshot):
    cfg, data, snap = bp_snapshot
    cfgs, starts = zip(*[branch(cfg, snap, data, freeze_model=True, epochs=7, rule="state_bridge", lr=lr)
                         for lr in (1e-3, 1e-2)], strict=True)
    results = train_population(list(cfgs), checkpoints=list(starts), data=[data, data])
    eager, _ = run(cfgs[0], data, starts[0])
    assert results[0]["history"][-1]["deep_cos"] == pytest.approx(eager[-1]["deep_cos"], abs=1e-4)
    assert results[1]["history"][-1]["test_acc"] == results[1]["history"][5]["test_acc"]


def test_exploitability_is_calibrated_by_the_oracle_and_a_random_credit(bp_snapshot):
    """With the true gradient, the same-batch loss change is negative and linear in eta at small eta; a random
    credit of the same size moves the loss by a vanishing fraction of that."""
    cfg, data, snap = bp_snapshot
    ex, start = branch(cfg, snap, data, exploitability=True, exploit_etas="1e-4,2e-4", exploit_steps="1",
                       exploit_batches=4, credit_norm=True)
    out = exploitability(start, data)
    d1, d2 = out["exploit/dL_same/k1/eta0.0001"], out["exploit/dL_same/k1/eta0.0002"]
    assert d1 < 0 and d2 == pytest.approx(2 * d1, rel=0.02)
    assert out["deep_cos"] == pytest.approx(1.0) and out["exploit/best_eta/k1"] == 2e-4
    _, model, _, _ = restore(start, data)
    model = model.double()
    gen = torch.Generator().manual_seed(0)
    batches = [(data.x_train[i * 128:(i + 1) * 128].double(), data.y_train[i * 128:(i + 1) * 128])
               for i in range(4)]
    held = (data.x_test.double(), data.y_test)

    def random_credit(m, hs, logits, y):
        return [torch.randn(h.shape, generator=gen, dtype=h.dtype) for h in hs]

    rnd = measure(model, random_credit, batches, held, [1, 2, 3, 4], [2e-4], [1], normalize=True)
    assert abs(rnd["exploit/dL_same/k1/eta0.0002"]) < 0.05 * abs(d2)


def test_exploitability_counts_divergence_instead_of_failing(bp_snapshot):
    """A credit that blows the weights up at the large eta: those measurements are counted as diverged, left out
    of the means and of the line search (whose best eta is then the grid's edge, flagged), never an exception;
    clamping the gradient elements keeps the same step finite."""
    cfg, data, snap = bp_snapshot
    _, start = branch(cfg, snap, data, exploitability=True)
    _, model, rule, _ = restore(start, data)
    model, rule = model.double(), rule.to(torch.float64)
    batches = [(data.x_train[i * 64:(i + 1) * 64].double(), data.y_train[i * 64:(i + 1) * 64]) for i in range(3)]
    held = (data.x_test[:256].double(), data.y_test[:256])

    def huge(m, hs, logits, y):
        return [1e150 * a for a in rule.credits(m, hs, logits, y)]

    out = measure(model, huge, batches, held, [1, 2, 3, 4], [1e-160, 1.0], [1, 3], normalize=False)
    assert out["exploit/diverged/k3/eta1"] == 3 and out["exploit/diverged/k3"] == 1
    assert math.isnan(out["exploit/dL_same/k3/eta1"]) and math.isnan(out["exploit/dL_same_std/k3/eta1"])
    assert out["exploit/best_eta/k3"] == 1e-160 and out["exploit/best_eta_edge/k3"] == 1
    assert math.isfinite(out["exploit/dL_same/k3"]) and out["exploit/diverged/k3/eta1e-160"] == 0
    clamped = measure(model, huge, batches, held, [1, 2, 3, 4], [1e-3], [1], normalize=False, clamp=1.0)
    assert clamped["exploit/diverged/k1"] == 0 and math.isfinite(clamped["exploit/dL_same/k1"])


def test_scaffold_periodic_refit_and_top_down_blend(dfa_trunk):
    cfg, data, _, _ = dfa_trunk
    from raycredit.models import build_model
    from raycredit.rules import build_rule

    c = cfg.replace(rule="scaffold", warmup_ratio=0.0, refit_every=2, refit_epochs=1, epochs=8, keep_epochs="")
    model = build_model(c.model, data.in_shape, data.n_classes, 1.0)
    rule = build_rule(c, model, data.n_classes)
    states = []
    for epoch in range(1, 7):
        rule.start_epoch(epoch, 8)
        states.append((rule.model_learns, rule.aux_learns))
    assert states == [(True, False), (True, False), (False, True)] * 2
    top = cfg.replace(rule="scaffold", warmup_ratio=0.0, blend_layers=1, keep_epochs="")
    rule = build_rule(top, model, data.n_classes)
    rule.start_epoch(1, 5)
    x, y = data.x_test[:8], data.y_test[:8]
    hs, logits = model.hiddens(x)
    got = rule.credits(model, hs, logits, y)
    dfa = build_rule(top.replace(rule="dfa"), model, data.n_classes).credits(model, hs, logits, y)
    assert all(torch.equal(got[l], dfa[l]) for l in range(2)) and not torch.equal(got[2], dfa[2])


def test_a_preset_declares_trunks_and_branches_of_branches():
    p = Preset(grid={"rule": ["bp"], "seed": [0, 1]}, fixed=SMALL, branches=(
        Branch(at=(2, 3), grid={"rule": ["dfa", "vector_field"]},
               fixed={"freeze_model": True, "epochs": lambda c: c["parent_epoch"] + 2}),
        Branch(of={"freeze_model": [True], "rule": ["vector_field"]}, fixed={"exploitability": True})))
    configs = expand(p, {})
    stages = lineage_levels(configs)
    assert [len(s) for s in stages] == [2, 8, 4]
    trunk = stages[0][0]
    assert trunk.train.keep_epochs == "2,3"
    kids = [c for c in stages[1] if c.lineage.parent_run == trunk.key()]
    assert sorted((c.lineage.parent_epoch, c.train.epochs) for c in kids) == [(2, 4), (2, 4), (3, 5), (3, 5)]
    by_key = {c.key(): c for c in configs}
    for c in stages[2]:
        parent = by_key[c.lineage.parent_run]
        assert parent.rule.rule == "vector_field" and c.lineage.parent_epoch == parent.train.epochs
    check_lineage(configs)
    with pytest.raises(UserError, match="not kept"):
        check_lineage([trunk, kids[0].replace(parent_epoch=1)])


def test_a_later_branch_can_select_trunks_only():
    p = Preset(grid={"rule": ["bp"]}, fixed=SMALL, branches=(
        Branch(at=(2,), fixed={"rule": "dfa"}),
        Branch(of={"parent_run": [""]}, at=(3,), fixed={"rule": "fa"})))
    configs = expand(p, {})
    assert [(c.rule.rule, c.lineage.parent_epoch) for c in configs] == [("bp", 0), ("dfa", 2), ("fa", 3)]


def test_branches_of_several_trunks_train_as_one_population(dfa_trunk):
    """Branches at one epoch of two trunks (seeds 0 and 1) share a population, each member starting from its
    own trunk; each agrees with its branch trained alone to float round-off."""
    from raycredit.population import group_members

    cfg, data, _, ckpts = dfa_trunk
    other = cfg.replace(seed=1)
    _, other_ckpts = run(other, data)
    knobs = dict(rule="scaffold", aux_kind="perlayer_vector", blend_alpha=0.5, warmup_ratio=0.5)
    pairs = [branch(c, k[2], data, **knobs, parent_run=f"trunk-{c.train.seed}.pt")
             for c, k in ((cfg, ckpts), (other, other_ckpts))]
    cfgs = [c for c, _ in pairs]
    assert len(group_members(cfgs, 2)) == 1
    results = train_population(cfgs, checkpoints=[s for _, s in pairs], data=[data, data])
    for c, (_, start), result in zip(cfgs, pairs, results, strict=True):
        alone, _ = run(c, data, start)
        assert [h["epoch"] for h in result["history"]] == [1, 2, 3, 4, 5]
        for got, want in zip(result["history"], alone, strict=True):
            assert got["test_acc"] == pytest.approx(want["test_acc"], abs=1e-6)
            assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-4)


def test_lineage_tables_pair_branches_with_their_own_trunk():
    """analysis/lineage.py on a hand-made table: the hand-off difference is paired by seed, recovery and
    exploitability group by snapshot epoch (a fitted credit counts from the trunk epoch it was fitted on)."""
    import pandas as pd

    from analysis.lineage import exploit_table, handoff_table, recovery_table, schedule_name

    base = dict(parent_epoch=0, freeze_model=False, exploitability=False, s_type="eT", aux_kind="vector_field",
                blend_alpha=0.75, prefit_epochs=0, freeze_after=-1, decay_to=-1.0, credit_norm=True,
                exploit_blocks="all", deep_cos=0.0, deep_rho=0.0, exploit_batches=4)
    rows = [dict(base, run_key="t0", parent_run="", rule="dfa", seed=0, test_acc=0.30),
            dict(base, run_key="t1", parent_run="", rule="dfa", seed=1, test_acc=0.40),
            dict(base, run_key="b0", parent_run="t0", parent_epoch=5, rule="scaffold", seed=0, test_acc=0.33),
            dict(base, run_key="b1", parent_run="t1", parent_epoch=5, rule="scaffold", seed=1, test_acc=0.45)]
    table = handoff_table(pd.DataFrame(rows))
    row = table[table["branch"] == "blend_0.75"].iloc[0]
    assert row["diff_mean"] == pytest.approx(0.04) and row["diff vs trunk"] == "0.040 ± 0.014"
    assert table[table["branch"] == "continue_DFA"].iloc[0]["final acc"] == "0.350 ± 0.071"

    fits = [dict(base, run_key=f"f{s}", parent_run=f"t{s}", parent_epoch=6, rule="vector_field", seed=s,
                 freeze_model=True, deep_cos=c, deep_nudge=-2.0)
            for s, c in ((0, 0.3), (1, 0.5))]
    rec = recovery_table(pd.DataFrame(rows[:2] + fits))
    assert list(rec["estimator"]) == ["vector_field (eT)"] and rec.iloc[0]["deep_cos"] == "0.400 ± 0.141"
    assert rec.iloc[0]["deep_nudge"] == "-2.000 ± 0.000"

    ex = {"exploit/best_eta/k1": 0.1, "exploit/dL_same/k1": -0.2, "exploit/dL_held/k1": -0.1, "exploit/pur/k1": 0.5,
          "exploit/upd_var/k1/eta0.1": 2.0, "exploit/best_eta_edge/k1": 1.0, "exploit/diverged/k1/eta0.1": 0.0,
          "exploit/diverged/k1/eta1": 3.0}
    meas = [dict(base, **ex, run_key="m0", parent_run="f0", parent_epoch=12, rule="vector_field",
                 exploitability=True, seed=0),
            dict(base, **ex, run_key="m1", parent_run="t0", parent_epoch=6, rule="bp", exploitability=True, seed=0)]
    table = exploit_table(pd.DataFrame(rows[:2] + fits + meas))
    assert sorted(zip(table["snapshot epoch"], table["credit"], strict=True)) == [(6, "oracle BP"), (6, "vector_field")]
    assert set(table["upd_var k=1"]) == {"2.000"} and set(table["PUR k=1"]) == {"0.500"}
    assert set(table["best eta k=1"]) == {"0.1!"} and set(table["diverged k=1"]) == {"3/8"}

    trunk = pd.Series(dict(rule="dfa"))
    assert schedule_name(pd.Series(dict(rule="vector_field", parent_epoch=20)), trunk) == "DFA_T20_then_Vec"
    assert schedule_name(pd.Series(dict(rule="dfa")), None) == "DFA_only"


def test_lineage_cli_explains_itself_and_refuses_another_searchs_experiment(tmp_path, capsys):
    """`lineage.py --help` prints its tables and usage (exit 0); a table asked of an experiment that holds another
    search's runs (schedules of a hand-off) exits 2 with one line naming both, writing nothing."""
    from mlflow.tracking import MlflowClient

    from analysis import lineage

    from mlflow_checks import new_store

    assert lineage.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: lineage.py {handoff,recovery,exploitability,schedules}") and "`schedules`" in out
    uri = new_store(tmp_path / "m.db")
    client = MlflowClient(uri)
    client.create_run(client.create_experiment("trunks"), tags={"search": "handoff"})
    before = sorted(tmp_path.rglob("*"))
    assert lineage.main(["schedules", "--experiment", "trunks", "--tracking-uri", uri,
                         "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "experiment 'trunks' holds the runs of search 'handoff'" in err[0], err
    assert "`lineage.py handoff` reads it" in err[0] and sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize("search", ["handoff", "schedules"])
def test_every_branch_of_a_trunk_has_its_own_run_name(search):
    """The branches of one trunk differ in auxiliary, α, schedule or start epoch, and so do their run names."""
    from raycredit.engine.trainable import run_label

    from searches_loader import load_search

    configs = expand(load_search(search).PRESETS["smoke"], {"seed": [0]})
    branches = [c for c in configs if c.lineage.parent_run]
    assert len(branches) > 2
    names = [run_label(c) for c in branches]
    assert len(set(names)) == len(names), sorted(names)
