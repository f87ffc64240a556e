"""The diagnostics added for the evaluation protocol, and rho's cheaper measurement, without Ray."""

import math

import pytest
import torch
import torch.nn.functional as F

from raycredit.diagnostics import SUPPORT_TAUS, diagnose, pearson, perturbation_rho, probe_forward, sphere_projections
from raycredit.rules import make_config
from raycredit.rules.base import per_sample
from raycredit.train import restore, train


def trained(tiny, rule, **over):
    """(cfg, model, rule, probe x, probe y) after training `tiny` with `rule`."""
    box = {}
    cfg = make_config({**tiny, "rule": rule, "diag_every": 100, **over})
    train(cfg, on_epoch=lambda e, m, fn: box.update(ckpt=fn()) if fn else None)
    cfg, model, r, data = restore(box["ckpt"])
    n = cfg.diag.probe_size
    return cfg, model, r, data.x_test[:n], data.y_test[:n]


def test_sphere_projections_have_the_law_of_a_uniform_unit_direction():
    """<a, u> and <g, u> drawn through span{a, g} have the moments of an explicit uniform u: E<a,u><g,u> =
    <a,g>/D, E<a,u>^2 = |a|^2/D, and the same Pearson correlation as explicit draws."""
    gen = torch.Generator().manual_seed(0)
    n, dim, m = 8, 20, 20000
    a = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    g = 0.5 * a + torch.randn(n, dim, generator=gen, dtype=torch.float64)
    pa, pg = sphere_projections(a, g, m, gen)

    def z_score(samples, expected):  # per sample n, in Monte Carlo standard errors
        return ((samples.mean(0) - expected) / (samples.std(0) / m**0.5)).abs().max().item()

    assert z_score(pa * pg, (a * g).sum(1) / dim) < 4.5
    assert z_score(pa.pow(2), a.pow(2).sum(1) / dim) < 4.5
    assert z_score(pg.pow(4), 3 * g.pow(2).sum(1) ** 2 / (dim * (dim + 2))) < 4.5
    u = torch.randn(m, n, dim, generator=gen, dtype=torch.float64)
    u = u / u.norm(dim=-1, keepdim=True)
    explicit = pearson((u * a).sum(-1).flatten(), (u * g).sum(-1).flatten()).item()
    assert pearson(pa.flatten(), pg.flatten()).item() == pytest.approx(explicit, abs=0.02)


def test_rho_measuring_every_direction_is_the_plain_finite_difference_rho(tiny):
    """rho_measured >= rho_dirs: every loss change is measured, and rho is the Pearson correlation of the
    predicted and measured changes written out by hand."""
    cfg, model, rule, x, y = trained(tiny, "fa")
    m = model.double().eval()
    x = x.double()
    with torch.enable_grad():
        hs, logits, g = probe_forward(m, x, y)
        a = rule.double().credits(m, hs, logits, y)
    base = F.cross_entropy(logits, y, reduction="none").detach()
    dirs, eps, i = 6, 1e-3, 1
    h = hs[i].detach()
    rho, _ = perturbation_rho(m, i, h, a[i], g[i], y, base, dirs, dirs, eps, torch.Generator().manual_seed(3))
    u = torch.randn((dirs, len(h), h.shape[1]), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    u = u / u.norm(dim=-1, keepdim=True)
    with torch.no_grad():
        meas = torch.stack([F.cross_entropy(m.forward_from(i, h + eps * uk), y, reduction="none") - base for uk in u])
    assert rho.item() == pytest.approx(pearson((eps * (u * a[i]).sum(-1)).flatten(), meas.flatten()).item(),
                                       abs=1e-9)


def test_rho_from_two_measured_directions_estimates_the_full_measurement(tiny):
    """The control-variate estimate (2 of 32 directions measured) agrees with measuring all 32, over draws."""
    cfg, model, rule, x, y = trained(tiny, "dfa", probe_size=128)
    full = [diagnose(model, rule, x, y, cfg.replace(rho_dirs=32, rho_measured=32, diag_dtype="float64").diag,
                     seed=s) for s in range(4)]
    cheap = [diagnose(model, rule, x, y, cfg.replace(rho_dirs=32, rho_measured=2, diag_dtype="float64").diag,
                      seed=s) for s in range(4)]
    for i in range(cfg.model.L + 1):
        f = sum(r[f"rho/l{i}"] for r in full) / 4
        c = sum(r[f"rho/l{i}"] for r in cheap) / 4
        assert c == pytest.approx(f, abs=0.03), i


@pytest.mark.parametrize("rule", ["bp", "fa", "dfa"])
def test_float32_diagnostics_agree_with_float64(tiny, rule):
    """float32 (with its larger step) gives every layer's rho within 0.01 of float64's on the same directions,
    and cos, nudge and the update alignment within float32 round-off."""
    cfg, model, r, x, y = trained(tiny, rule, epochs=3, d=64)
    f64 = diagnose(model, r, x, y, cfg.replace(diag_dtype="float64").diag, seed=7)
    f32 = diagnose(model, r, x, y, cfg.replace(diag_dtype="float32").diag, seed=7)
    assert f32["diag_float64"] == 0 and f64["diag_float64"] == 1
    for i in range(cfg.model.L + 1):
        assert f32[f"rho/l{i}"] == pytest.approx(f64[f"rho/l{i}"], abs=0.01)
        assert f32[f"cos/l{i}"] == pytest.approx(f64[f"cos/l{i}"], abs=1e-4)
        assert f32[f"nudge/l{i}"] == pytest.approx(f64[f"nudge/l{i}"], abs=1e-4)
    assert f32["deep_upd_cos"] == pytest.approx(f64["deep_upd_cos"], abs=1e-4)


def test_float32_that_cannot_resolve_falls_back_to_float64(tiny):
    """A residual stream blown up 1e7x (mode 1a): float32 cannot even represent h + eps u, so the diagnostics
    are measured in float64, and equal a float64 run exactly."""
    cfg, model, r, x, y = trained(tiny, "dfa")
    with torch.no_grad():
        model.embed.weight.mul_(1e7)
        model.embed.bias.mul_(1e7)
    auto = diagnose(model, r, x, y, cfg.replace(diag_dtype="float32").diag, seed=7)
    f64 = diagnose(model, r, x, y, cfg.replace(diag_dtype="float64").diag, seed=7)
    assert auto["diag_float64"] == 1
    assert auto == f64


def test_support_of_a_trained_bp_model_is_full(tiny):
    cfg, model, rule, x, y = trained(tiny, "bp")
    m = diagnose(model, rule, x, y, cfg.diag, seed=0)
    for i in range(cfg.model.L + 1):
        assert m[f"support/l{i}/1e-8"] > 0.99
        assert m[f"g_p10/l{i}"] <= m[f"g_p50/l{i}"] <= m[f"g_p90/l{i}"]
        assert m[f"a_over_g/l{i}"] == pytest.approx(1.0, rel=1e-6)
    for tau in SUPPORT_TAUS:  # every sample active: Gamma on the active subset is Gamma
        assert m[f"deep_cos_active/{tau}"] == pytest.approx(m["deep_cos"], abs=1e-12)


def test_support_collapses_with_the_gradient(tiny):
    """The readout scaled down 1e12x: every per-sample gradient is below 1e-8, no sample is active, and
    active-subset Gamma is not reported."""
    cfg, model, rule, x, y = trained(tiny, "dfa")
    with torch.no_grad():
        model.readout.weight.mul_(1e-12)
    m = diagnose(model, rule, x, y, cfg.diag, seed=0)
    for i in range(cfg.model.L + 1):
        assert m[f"support/l{i}/1e-8"] < 0.01
    assert m["mode1b"] == 1
    assert not any(k.startswith("deep_cos_active") for k in m)


def test_support_and_quantiles_by_hand(tiny):
    cfg, model, rule, x, y = trained(tiny, "fa")
    m = diagnose(model, rule, x, y, cfg.replace(diag_dtype="float64").diag, seed=0)
    mm = model.double()
    with torch.enable_grad():
        _, _, g = probe_forward(mm, x.double(), y)
    norms = per_sample(g[2]).norm(dim=-1)
    median = norms.sort().values[(len(norms) - 1) // 2: len(norms) // 2 + 1].mean()
    assert m["g_p50/l2"] == pytest.approx(median.item(), rel=1e-9)
    tau = float(torch.quantile(norms, 0.3))
    assert (norms > tau).double().mean().item() == pytest.approx(0.7, abs=1 / len(norms) + 1e-9)
    assert m["support/l2/1e-4"] == (norms > 1e-4).double().mean().item()


def test_update_alignment_is_one_for_backprop_and_for_fa_with_feedback_equal_to_weights(tiny):
    cfg, model, rule, x, y = trained(tiny, "bp")
    m = diagnose(model, rule, x, y, cfg.replace(diag_dtype="float64").diag, seed=0)
    assert m["deep_upd_cos"] == pytest.approx(1.0, abs=1e-9)
    cfg, model, rule, x, y = trained(tiny, "fa", arch="mlp")
    with torch.no_grad():
        for name in rule.linears:
            rule.B[name.replace(".", "_")].copy_(model.get_submodule(name).weight)
    m = diagnose(model, rule, x, y, cfg.replace(diag_dtype="float64").diag, seed=0)
    for l in range(1, cfg.model.L + 1):
        assert m[f"upd_cos/b{l}"] == pytest.approx(1.0, abs=1e-9)
    assert m["wb_angle"] == pytest.approx(0.0, abs=1e-3)


def test_update_alignment_is_absent_while_the_model_is_frozen(tiny):
    cfg, model, rule, x, y = trained(tiny, "dfa")
    rule.freeze_model = True
    m = diagnose(model, rule, x, y, cfg.diag, seed=0)
    assert "deep_upd_cos" not in m and "deep_cos" in m


def test_wb_angles_by_hand(tiny):
    """fa: angle between each B and its W; dfa: B_l against the probe's mean Jacobian dz/dh_l, on a residual and
    a plain net (finite differences); bp: none."""
    cfg, model, rule, x, y = trained(tiny, "fa")
    m = diagnose(model, rule, x, y, cfg.diag, seed=0)
    name = rule.linears[0]
    b = rule.B[name.replace(".", "_")].double().flatten()
    w = model.get_submodule(name).weight.detach().double().flatten()
    assert m[f"wb_angle/{name}"] == pytest.approx(math.degrees(math.acos(b @ w / (b.norm() * w.norm()))), abs=1e-6)
    assert len([k for k in m if k.startswith("wb_angle/")]) == len(rule.linears)
    for arch in ("resmlp", "mlp"):
        cfg, model, rule, x, y = trained(tiny, "dfa", arch=arch)
        m = diagnose(model, rule, x, y, cfg.diag, seed=0)
        mm = model.double()
        h1 = mm.hiddens(x.double())[0][1].detach()
        # the Jacobian of the logits at h_1 by finite differences along each coordinate, averaged over the probe
        eps, cols = 1e-6, []
        with torch.no_grad():
            for k in range(h1.shape[1]):
                e = torch.zeros_like(h1)
                e[:, k] = eps
                cols.append(((mm.forward_from(1, h1 + e) - mm.forward_from(1, h1 - e)) / (2 * eps))[:64].mean(0))
        j = torch.stack(cols, 1).flatten()
        b = rule.B["1"].double().flatten()
        assert m["wb_angle/l1"] == pytest.approx(math.degrees(math.acos(b @ j / (b.norm() * j.norm()))), abs=1e-5)
    cfg, model, rule, x, y = trained(tiny, "bp")
    assert "wb_angle" not in diagnose(model, rule, x, y, cfg.diag, seed=0)


def test_loss_decrease_over_the_window(tiny):
    history = train(make_config({**tiny, "rule": "dfa", "epochs": 4, "loss_window": 2}))["history"]
    assert "loss_decrease" not in history[0]
    loss = [r["train_loss"] for r in history]
    assert history[1]["loss_decrease"] == pytest.approx(loss[1] - loss[0], abs=1e-12)
    assert history[3]["loss_decrease"] == pytest.approx(loss[3] - loss[1], abs=1e-12)


def float64_cosines(ckpt: dict) -> dict[str, float]:
    """cos/l{i} and deep_cos of a checkpoint, recomputed by hand in float64 (not through `diagnose`): the
    connected forward from a leaf h_0, autograd's per-sample gradients, the rule's own credit on float64 copies,
    and the cosine of every sample."""
    cfg, model, rule, data = restore(ckpt)
    model, rule = model.double().eval(), rule.to(torch.float64)
    n = cfg.diag.probe_size
    x, y = data.x_test[:n].double(), data.y_test[:n]
    with torch.enable_grad():
        hs = [model.embed(x).detach().requires_grad_()]
        for l in range(1, model.L + 1):
            hs.append(model.step(l, hs[-1], model.f(l, hs[-1])))
        logits = model.head(hs[-1])
        grads = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), hs, retain_graph=True)
        credits = rule.credits(model, hs, logits, y)
    out = {f"cos/l{i}": F.cosine_similarity(a.detach().flatten(1), g.flatten(1), dim=1).mean().item()
           for i, (a, g) in enumerate(zip(credits, grads, strict=True))}
    deep = [i for i in range(1, model.L + 1) if i not in rule.exact_layers()] or list(range(1, model.L + 1))
    out["deep_cos"] = sum(out[f"cos/l{i}"] for i in deep) / len(deep)
    return out


@pytest.mark.parametrize("over", [dict(rule="ep", ep_beta=0.01), dict(rule="fa", arch="mlp", epochs=3)],
                         ids=["ep-resmlp", "fa-mlp"])
def test_logged_cosines_equal_a_float64_recomputation_from_the_checkpoint(tiny, over):
    """Trained briefly on the CPU with the default diag_dtype, every logged cos/l{i} and deep_cos equals a float64
    recomputation by hand from the epoch's checkpoint within 1e-6 (float32 diagnostics were off by up to 0.9 on
    EP, whose credit is a difference of nearly equal states)."""
    logged = []
    cfg = make_config({**tiny, **over})
    train(cfg, on_epoch=lambda e, m, fn: logged.append((m, fn())))
    for metrics, ckpt in logged:
        assert metrics["diag_float64"] == 1
        exact = float64_cosines(ckpt)
        for name, value in exact.items():
            assert metrics[name] == pytest.approx(value, abs=1e-6), name


def test_float32_that_misses_the_credit_falls_back_to_float64(tiny):
    """diag_dtype=float32 on EP at a small beta: float32's credit is round-off, the float64 check catches it, and
    the diagnostics equal a float64 run."""
    cfg, model, r, x, y = trained(tiny, "ep", ep_beta=1e-4)
    f32 = diagnose(model, r, x, y, cfg.replace(diag_dtype="float32").diag, seed=7)
    f64 = diagnose(model, r, x, y, cfg.diag, seed=7)
    assert f32["diag_float64"] == 1
    assert f32 == f64
