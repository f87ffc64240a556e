"""Search presets and the common flags, without Ray."""

import pytest

from raycredit.errors import UserError
from raycredit.flags import overrides_from, search_parser
from raycredit.search import Preset, expand

from searches_loader import load_search

SCAN = load_search("both_fail_scan")


def configs(*argv):
    args = search_parser("both_fail_scan", "", SCAN.PRESETS, "paper").parse_args(list(argv))
    return expand(SCAN.PRESETS[args.preset], overrides_from(args))


def test_presets_are_the_spec_grids():
    paper = configs("--data-dir", "/data")
    assert len(paper) == (2 * 2 + 2) * 2 * 4 * 10  # (fa, dfa) x credit_norm, plus bp and frozen
    assert {c.rule.rule for c in paper} == {"bp", "fa", "dfa", "frozen"}
    assert {c.model.d for c in paper} == {256, 512} and {c.model.L for c in paper} == {2, 4, 8, 12}
    assert {c.train.seed for c in paper} == set(range(10)) and {c.data.dataset for c in paper} == {"cifar10"}
    smoke = configs("--preset", "smoke")
    assert len(smoke) == 48 and {c.data.dataset for c in smoke} == {"synthetic"}


def test_overrides_collapse_axes_and_replace_fixed_values():
    cs = configs("--preset", "smoke", "--seeds", "3,4,5", "--set", "d=32", "--epochs", "2", "--set", "lr=1e-2")
    assert len(cs) == 6 * 2 * 3
    assert {(c.model.d, c.train.epochs, c.train.lr) for c in cs} == {(32, 2, 0.01)}
    assert {c.train.seed for c in cs} == {3, 4, 5}
    assert len({c.key() for c in cs}) == len(cs)
    assert {c.train.seed for c in configs("--preset", "smoke", "--set", "seed=7")} == {7}


def test_duplicate_configs_are_run_once():
    p = Preset(grid={"rule": ["bp", "bp"], "seed": [0]}, fixed={"d": 8, "L": 1})
    assert len(expand(p, {})) == 1


@pytest.mark.parametrize("argv, words", [
    (["--set", "nope=1"], "unknown config key 'nope'"),
    (["--set", "d"], "KEY=VALUE"),
    (["--seeds", ","], "no seeds"),
])
def test_bad_overrides(argv, words):
    with pytest.raises(UserError, match=words):
        configs("--preset", "smoke", *argv)


def test_the_default_paper_preset_without_data_points_to_the_smoke_preset(tmp_path, capsys):
    assert SCAN.main(["--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", "--storage", str(tmp_path / "ray")]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "needs --data-dir" in line and "(preset 'paper'; `--preset smoke` needs no data" in line, line
    assert list(tmp_path.iterdir()) == []


def test_the_optuna_searcher_tells_optuna_each_trials_final_value_without_a_repeated_step():
    """A trial that a restored search resumes from raycredit's checkpoint file reports Tune's iteration 1 again
    (Tune holds no checkpoint of it, so its count restarts). Tune's OptunaSearch would report that step to Optuna
    a second time, and Optuna warns (an error here: pyproject's filterwarnings); the searcher tells Optuna the
    final value once, as the trial ends."""
    import optuna

    from raycredit.engine.sweep import FinalValueSearch

    def space(trial):
        trial.suggest_float("x", 0.0, 1.0)

    storage = optuna.storages.InMemoryStorage()
    searcher = FinalValueSearch(space, metric="test_acc", mode="max", storage=storage,
                                sampler=optuna.samplers.RandomSampler(seed=0))
    config = searcher.suggest("t0")
    for epoch, acc in [(1, 0.25), (2, 0.5), (3, 0.625), (4, 0.75)]:  # epochs 3 and 4 after the resume: steps 1, 2
        searcher.on_trial_result("t0", {"test_acc": acc, "epoch": epoch, "training_iteration": 1 + (epoch - 1) % 2})
    searcher.on_trial_complete("t0", {"test_acc": 0.75, "epoch": 4, "training_iteration": 2})
    (trial,) = optuna.load_study(study_name="optuna", storage=storage).trials
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.value == 0.75
    assert trial.params == {"x": config["x"]}
