"""raycredit/study.py's importances and plots of an exported Optuna study (the export itself: test_cluster)."""


def test_a_conditional_knob_drawn_too_rarely_gives_one_notice_not_optunas_warnings(tmp_path, capsys):
    """aux_lr exists only when aux_kind is "linear", drawn in one trial: PED-ANOVA warns for each computation
    (the importances, then again in their plot); the export says it once, in a line naming the knob, and
    writes every file. pytest's error filter fails the test on any warning that gets through."""
    import optuna

    from raycredit.study import PLOTS, _importances_and_plots

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    draws = [("gaussian_noise", 0.1), ("gaussian_noise", 0.5), ("gaussian_noise", 0.9), ("linear", 0.3)]
    for i, (kind, alpha) in enumerate(draws):
        params = {"aux_kind": kind, "blend_alpha": alpha, **({"aux_lr": 0.01} if kind == "linear" else {})}
        dists = {"aux_kind": optuna.distributions.CategoricalDistribution(["gaussian_noise", "linear"]),
                 "blend_alpha": optuna.distributions.FloatDistribution(0.0, 1.0),
                 **({"aux_lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)} if kind == "linear"
                    else {})}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=0.5 + 0.1 * i))
    _importances_and_plots(study, study.trials, tmp_path)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("notice: aux_lr: fewer than 2 of the 4 trials"), out
    for name in PLOTS:
        assert (tmp_path / name).stat().st_size > 0, name
