"""Credit diagnostics on a fixed probe batch.

Metric names (one table for the whole project; i = 0..L, l0 = embedding output, b{l} = block l = 1..L, τ one
of `SUPPORT_TAUS`; CE is the task's loss, `rules.base.task_loss`: the cross-entropy, or on toy_lq the quadratic
cost, where dCE_n/dh_i is the costate and cos/l{i} the costate cosine):

| name | meaning |
|---|---|
| `cos/l{i}` | mean over probe samples of cosine(a_i, dCE_n/dh_i), true gradient from a connected forward graph |
| `deep_cos` | mean of `cos/l{i}` over the deep layers i = 1..L whose credit the rule estimates (below): Gamma |
| `rho/l{i}` | Pearson corr. over samples x `rho_dirs` unit directions u of eps<a_i, u> and CE(h_i+eps u) - CE(h_i) |
| `deep_rho` | mean of `rho/l{i}` over the same layers |
| `nudge/l{i}` | mean CE after h_i -> h_i - eta * a_i / RMS(a_i), minus mean CE before (negative = credit descends) |
| `deep_nudge` | mean of `nudge/l{i}` over the same layers |
| `h_norm/l{i}` | mean ||h_i|| |
| `g_norm/l{i}` | mean ||dCE_n/dh_i|| (per-sample cross-entropy) |
| `h_norm/last`, `g_norm/last` | the same at the last layer h_L, under one name for every depth |
| `g_p10/l{i}`, `g_p50/l{i}`, `g_p90/l{i}` | 10th, 50th, 90th percentile over probe samples of ||dCE_n/dh_i|| |
| `support/l{i}/τ` | fraction of probe samples with ||dCE_n/dh_i|| > τ (support sparsity) |
| `deep_cos_active/τ` | Gamma on the active subset: deep_cos over the samples with ||dCE_n/dh_i|| > τ (below) |
| `a_over_g/l{i}` | mean ||a_i|| / mean ||dCE_n/dh_i||: the credit's scale against the true gradient's |
| `upd_cos/b{l}` | cosine of the rule's gradient for block l's parameters and the true one, on the probe (below) |
| `deep_upd_cos` | mean of `upd_cos/b{l}` over the blocks of the deep layers above |
| `wb_angle/{name}` | degrees between a feedback matrix and the forward weight or product it stands in for (below) |
| `wb_angle` | mean of the `wb_angle/{name}` |
| `diag_float64` | 1 when the diagnostics ran in float64, 0 when in float32 (below) |
| `mode1a` | 1 when ||h_L|| has grown >= 100x over its value at init (residual-stream growth) |
| `mode1b` | 1 when ||g_L|| < 1e-7 (gradient-floor collapse) |
| `train_loss`, `train_acc` | mean CE and accuracy over the epoch's training mini-batches |
| `test_loss`, `test_acc` | CE and accuracy on the whole test set |
| `loss_decrease` | train_loss minus its value `loss_window` epochs earlier (or at epoch 1); from epoch 2 |
| `diverged` | 1 when the loss or activations became non-finite (or ||h|| > 1e30); the trial stops |
| `epoch`, `time_s` | epoch index (1-based), wall seconds since the start of the run |

`deep_cos_active/τ` averages, over the deep layers that have any sample above τ, the mean cosine of those
samples (absent when no layer has one). `upd_cos/b{l}` compares the gradient the rule gives block l's
parameters on the probe batch (before clipping and the optimizer's own scaling) with the true gradient of the
probe's mean CE with respect to the same parameters. `wb_angle` pairs come from `Rule.feedback_pairs`: fa's
and its relatives' B against W; and from `Rule.jacobian_feedback`: dfa's B_l against what it stands in for, the
Jacobian dz/dh_l of the outputs with respect to h_l (the forward product through the blocks, out_ln and the
readout), averaged over the probe's first `JACOBIAN_SAMPLES` samples. `loss_decrease` is the reference study's
training-loss decrease: negative when the loss falls.

A rule's exact layers (`Rule.exact_layers`: h_L for fa with fa_mode=reference and for state_bridge,
whose a_L is the exact output-local gradient) are left out of the deep summaries, so that an exact
last layer does not lift a summary meant to measure estimated credit; when every deep layer is exact
(`bp`), the summary is over all of them. Every per-layer metric is still logged.
Rules without credit (`frozen`) report no credit metrics (cos, rho, nudge, a_over_g, upd_cos).

rho is measured, with fewer forward passes than samples x directions. The loss change along u is
eps<g, u> + r(u), g = dCE_n/dh_i from the probe's backward pass and r the rest (curvature, round-off). The
linear part is exact for all `rho_dirs` directions: for the ones nobody perturbs along, <a, u> and <g, u>
are drawn exactly as for a uniform unit u, through u's components in span{a, g} (`sphere_projections`).
The rest r is measured by forward passes on the first `rho_measured` directions of every sample and
stands for all of them in the Pearson sums (a control variate: the estimate's expectation is the full
measurement's). With rho_measured = rho_dirs every loss change is measured, as in a plain
finite-difference rho.

Precision is a guarantee. Every diagnostic runs on a float64 copy of the model and the rule (`diag_dtype`
float64, the default, on every device): the rule's credit, the true gradient and the loss changes are then
resolved wherever the network's own numbers are (float32 on the CPU loses all three: EP's credit is a
difference of nearly equal states, rare samples carry gradients below 1e-6). `diag_dtype=float32` is an
explicit trade for speed, kept only where it is shown to resolve what it measures: a float64 pass of the probe
recomputes every layer's credit cosine, nudge and support, and if any differs from float32's by more than
`FLOAT32_TOL` (or float32 cannot resolve rho's loss changes, below), everything is measured again in float64.
`diag_float64` logs the dtype every diagnostics epoch actually used; the analyses refuse to average seeds that
used different ones (`raycredit.verdicts.mixed_dtypes`).
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from raycredit.config import DiagConfig
from raycredit.rules.base import Rule, per_sample, repeat_samples, rms_normalize, task_loss

MODE1A_GROWTH = 100.0
MODE1B_FLOOR = 1e-7
# thresholds of support sparsity, as written in the metric names `support/l{i}/τ` (not `@τ`: MLflow metric names
# may hold only letters, digits and _ - . / : space, mlflow.utils.validation.validate_param_and_metric_name)
SUPPORT_TAUS = ("1e-4", "1e-6", "1e-8")
QUANTILES = (10, 50, 90)
# float32 rho stands when every layer's measured rest of the loss change (curvature and round-off) is at most
# this fraction of its linear part (RMS); measured on bp/fa/dfa checkpoints at d=256, the float32 rho is then
# within 0.003 of float64's (the rest, mostly round-off, enters rho's sums rho_dirs/rho_measured times)
FLOAT32_REST = 0.03
# float32 stands when every layer's cos, nudge and support are within this of a float64 pass of the probe
FLOAT32_TOL = 1e-5
CHECKED = ("cos/", "nudge/", "support/")
JACOBIAN_SAMPLES = 64  # probe samples whose mean Jacobian dfa's feedback angle is measured against


def to_floats(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """Scalar tensors to Python floats with a single host sync."""
    return dict(zip(values, torch.stack([v.double() for v in values.values()]).tolist(), strict=True))


def diag_dtype(cfg: DiagConfig) -> torch.dtype:
    """The dtype the diagnostics start in (`diag_dtype`); float32 is then checked against float64 (`diagnose`)."""
    return getattr(torch, cfg.diag_dtype)


def per_sample_cos(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    tiny = torch.finfo(a.dtype).tiny
    a, g = per_sample(a), per_sample(g)
    return (a * g).sum(-1) / (a.norm(dim=-1) * g.norm(dim=-1)).clamp_min(tiny)


def pearson(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    u, v = u - u.mean(), v - v.mean()
    return (u * v).sum() / (u.norm() * v.norm())


def sphere_projections(a: torch.Tensor, g: torch.Tensor, m: int, gen: torch.Generator):
    """(<a_n, u>, <g_n, u>), each (m, N), for m independent unit directions u per sample, uniform on the sphere
    of R^D (D >= 3), without drawing u: with e1, e2 an orthonormal basis of span{a_n, g_n}, u's coordinates
    there are (z1, z2) / sqrt(z1^2 + z2^2 + c), z ~ N(0, 1) and c ~ chi^2(D - 2) independent."""
    n, dim = a.shape
    tiny = torch.finfo(a.dtype).tiny
    a_norm = a.norm(dim=1)
    e1 = a / a_norm.clamp_min(tiny)[:, None]
    g1 = (g * e1).sum(1)
    g2 = (g - g1[:, None] * e1).norm(dim=1)
    z = torch.randn((m, n, 2), generator=gen, device=a.device, dtype=a.dtype)
    seed = int(torch.randint(2**62, (1,), generator=gen, device=gen.device))  # chi^2 draws: numpy, same stream
    c = torch.from_numpy(np.random.default_rng(seed).chisquare(dim - 2, size=(m, n))).to(a.device, a.dtype)
    u = z / (z.pow(2).sum(-1) + c).sqrt()[..., None]
    return a_norm * u[..., 0], g1 * u[..., 0] + g2 * u[..., 1]


@torch.no_grad()
def perturbation_rho(model, i: int, h: torch.Tensor, a: torch.Tensor, g: torch.Tensor, y: torch.Tensor,
                     base: torch.Tensor, dirs: int, measured: int, eps: float,
                     gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(rho, RMS of the measured rest / RMS of the linear part): the Pearson correlation over samples x `dirs`
    unit directions u of the predicted change eps<a, u> and the measured per-sample CE change along u,
    `measured` directions per sample by forward passes (module docstring). base: the per-sample CE at h."""
    a, g = per_sample(a), per_sample(g)
    n, dim = a.shape
    k = dirs if dim < 3 else min(measured, dirs)
    u = torch.randn((k, n, dim), generator=gen, device=h.device, dtype=torch.float64)  # one draw for either dtype
    u = (u / u.norm(dim=-1, keepdim=True)).to(h.dtype)
    hp = (h.unsqueeze(0) + eps * u.view(k, *h.shape)).flatten(0, 1)
    meas = task_loss(model.forward_from(i, hp), repeat_samples(y, k), reduction="none").view(k, n) - base
    # the Pearson sums in float64 whatever the dtype of the forward passes
    pred_k, lin_k = (eps * (u * a).sum(-1)).double(), (eps * (u * g).sum(-1)).double()
    rest = meas.double() - lin_k
    pred, lin = pred_k, lin_k
    if k < dirs:
        pa, la = sphere_projections(a.double(), g.double(), dirs - k, gen)
        pred, lin = torch.cat([pred_k.flatten(), eps * pa.flatten()]), torch.cat([lin_k.flatten(), eps * la.flatten()])
    w, count = dirs / k, dirs * n  # each measured rest stands for dirs / k directions
    s_p, s_pp = pred.sum(), pred.pow(2).sum()
    s_q = lin.sum() + w * rest.sum()
    s_qq = lin.pow(2).sum() + w * (2 * lin_k * rest + rest.pow(2)).sum()
    s_pq = (pred * lin).sum() + w * (pred_k * rest).sum()
    cov = s_pq / count - s_p * s_q / count**2
    var_p = s_pp / count - (s_p / count) ** 2
    var_q = (s_qq / count - (s_q / count) ** 2).clamp_min(0)
    return cov / (var_p * var_q).sqrt(), rest.norm() / lin_k.norm()


@torch.no_grad()
def nudge(model, i: int, h: torch.Tensor, a: torch.Tensor, y: torch.Tensor, eta: float,
          before: torch.Tensor) -> torch.Tensor:
    """Mean CE after h -> h - eta a / RMS(a), minus `before` (the mean CE at h)."""
    return task_loss(model.forward_from(i, h - eta * rms_normalize(a)), y) - before


def probe_forward(model, x: torch.Tensor, y: torch.Tensor):
    """Connected forward from a leaf h_0: (hs, logits, true per-sample gradients dCE_n/dh_i)."""
    h0 = model.embed(x).detach().requires_grad_()
    hs = [h0]
    for l in range(1, model.L + 1):
        hs.append(model.step(l, hs[-1], model.f(l, hs[-1])))
    logits = model.head(hs[-1])
    grads = torch.autograd.grad(task_loss(logits, y, reduction="sum"), hs, retain_graph=True)
    return hs, logits, [g.detach() for g in grads]


def summary_layers(L: int, exact: frozenset[int]) -> list[int]:
    """The deep layers that the deep_* summaries average: 1..L less the exact ones, or all when all are exact."""
    estimated = [i for i in range(1, L + 1) if i not in exact]
    return estimated or list(range(1, L + 1))


def update_alignment(model, rule: Rule, x: torch.Tensor, y: torch.Tensor, blocks: list[int]) -> dict[str, torch.Tensor]:
    """upd_cos/b{l} for l = 1..L and deep_upd_cos over `blocks`: the rule's gradient for each block's parameters
    on (x, y) against the true gradient of the mean CE; {} while the rule gives the blocks no gradient."""
    params = [list(model.blocks[l - 1].parameters()) for l in range(1, model.L + 1)]
    flat = [p for ps in params for p in ps]
    for p in flat:
        p.requires_grad_(True)
    try:
        with torch.enable_grad():
            objective = rule.loss(model, x, y)[0]
            if not objective.requires_grad:
                return {}
            used = torch.autograd.grad(objective, flat, allow_unused=True)
            if all(t is None for t in used):
                return {}
            true = torch.autograd.grad(task_loss(model(x), y), flat)
    finally:
        for p in flat:
            p.requires_grad_(False)
    out, at = {}, 0
    for l, ps in enumerate(params, start=1):
        u = torch.cat([(t if t is not None else torch.zeros_like(p)).flatten()
                       for t, p in zip(used[at:at + len(ps)], ps, strict=True)])
        g = torch.cat([t.flatten() for t in true[at:at + len(ps)]])
        out[f"upd_cos/b{l}"] = (u @ g) / (u.norm() * g.norm()).clamp_min(torch.finfo(u.dtype).tiny)
        at += len(ps)
    out["deep_upd_cos"] = torch.stack([out[f"upd_cos/b{l}"] for l in blocks]).mean()
    return out


def mean_jacobians(z: torch.Tensor, hs: list[torch.Tensor]) -> list[torch.Tensor]:
    """For each h in hs, (outputs, *h's feature shape): the Jacobian dz_n/dh_n averaged over the samples n, by one
    batched backward over the outputs."""
    eye = torch.eye(z.shape[1], dtype=z.dtype, device=z.device)
    rows = torch.autograd.grad(z, hs, grad_outputs=eye[:, None, :].expand(-1, *z.shape), is_grads_batched=True)
    return [r.mean(1) for r in rows]


def angle_degrees(b: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    b, w = b.flatten().double(), w.flatten().double()
    cos = (b @ w) / (b.norm() * w.norm()).clamp_min(torch.finfo(b.dtype).tiny)
    return torch.rad2deg(torch.arccos(cos.clamp(-1, 1)))


def diagnose(model, rule: Rule, x: torch.Tensor, y: torch.Tensor, cfg: DiagConfig, *,
             seed: int, h_norm_init: float | None = None, credits=None) -> dict[str, float]:
    """All the credit diagnostics of (model, rule) on the probe batch (x, y) (the module's metric table).

    `credits` overrides the rule's credit (calibration tests pass a random vector here); the rule's own
    update (upd_cos) is then not measured. In float32 (`diag_dtype`) they are measured again in float64
    unless float32 is shown to resolve them (module docstring).
    """
    out = measure(model, rule, x, y, cfg, seed, credits, diag_dtype(cfg))
    if out is not None and out["diag_float64"] == 0:
        exact = measure(model, rule, x, y, cfg, seed, credits, torch.float64, check_only=True)
        off = [float((out[k].double() - v.double()).abs()) for k, v in exact.items() if k.startswith(CHECKED)]
        if not all(d <= FLOAT32_TOL for d in off):  # a NaN difference fails too
            out = None
    if out is None:
        out = measure(model, rule, x, y, cfg, seed, credits, torch.float64)
    vals = to_floats(out)
    L = model.L
    vals["h_norm/last"], vals["g_norm/last"] = vals[f"h_norm/l{L}"], vals[f"g_norm/l{L}"]
    hL = vals[f"h_norm/l{L}"]
    vals["mode1a"] = float(h_norm_init is not None and hL >= MODE1A_GROWTH * h_norm_init)
    vals["mode1b"] = float(vals[f"g_norm/l{L}"] < MODE1B_FLOOR)
    return vals


def measure(model, rule: Rule, x: torch.Tensor, y: torch.Tensor, cfg: DiagConfig, seed: int, credits,
            dtype: torch.dtype, check_only: bool = False) -> dict[str, torch.Tensor] | None:
    """`diagnose` on a `dtype` copy of (model, rule); None when in float32 some layer's measured loss changes
    stray from their exact linear part by more than FLOAT32_REST (RMS): float32 does not resolve them there.
    check_only: only the metrics of `CHECKED` (no rho, no update alignment), to check float32 against."""
    float64 = dtype == torch.float64
    eps = cfg.rho_eps if float64 else cfg.rho_eps_float32
    m = copy.deepcopy(model).to(dtype).eval()
    r = copy.deepcopy(rule).to(dtype)
    r.generator = torch.Generator(device=x.device).manual_seed(seed + 1)  # draws of rule.loss (upd_cos)
    for p in m.parameters():
        p.requires_grad_(False)
    x = x.to(dtype)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    own = credits is None
    with torch.enable_grad():
        hs, logits, g = probe_forward(m, x, y)
        if own:
            credits = r.credits(m, hs, logits, y)
        angles = {} if check_only else jacobian_angles(m, r, x, y)
    hs, logits = [h.detach() for h in hs], logits.detach()
    base = task_loss(logits, y, reduction="none")
    out: dict[str, torch.Tensor] = {"diag_float64": torch.tensor(float(float64))}
    deep = summary_layers(m.L, r.exact_layers())
    active_cos: dict[str, list[torch.Tensor]] = {tau: [] for tau in SUPPORT_TAUS}
    rests = []
    for i in range(m.L + 1):
        g_norms = stream_norms(out, i, hs[i], g[i])
        if credits is None:
            continue
        a = credits[i].to(dtype)
        cos = per_sample_cos(a, g[i])
        out[f"cos/l{i}"] = cos.mean()
        out[f"nudge/l{i}"] = nudge(m, i, hs[i], a, y, cfg.nudge_eta, base.mean())
        if check_only:
            continue
        out[f"rho/l{i}"], rest = perturbation_rho(m, i, hs[i], a, g[i], y, base, cfg.rho_dirs, cfg.rho_measured,
                                                  eps, gen)
        rests.append(rest)
        out[f"a_over_g/l{i}"] = per_sample(a).norm(dim=-1).mean() / g_norms.mean()
        if i in deep:
            for tau in SUPPORT_TAUS:
                active = g_norms > float(tau)
                if active.any():
                    active_cos[tau].append(cos[active].mean())
    if check_only:
        return out
    if not float64 and rests and not bool(torch.stack(rests).max() <= FLOAT32_REST):  # a NaN rest fails too
        return None
    if credits is not None:
        out.update(deep_means(out, deep, active_cos))
        if own:
            out.update(update_alignment(m, r, x, y, deep))
    angles.update({f"wb_angle/{name}": angle_degrees(b, w) for name, (b, w) in r.feedback_pairs(m).items()})
    if angles:
        out.update(angles, wb_angle=torch.stack(list(angles.values())).mean())
    return out


def jacobian_angles(m, r: Rule, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """{wb_angle/<name>: angle} between each of the rule's Jacobian-standing feedback matrices and the mean
    Jacobian it stands for: one backward per output, averaged over the probe's first JACOBIAN_SAMPLES samples,
    on their own graph."""
    pairs = r.jacobian_feedback()
    if not pairs:
        return {}
    layers = sorted({i for i, _ in pairs.values()})
    sub, sub_logits, _ = probe_forward(m, x[:JACOBIAN_SAMPLES], y[:JACOBIAN_SAMPLES])
    jac = dict(zip(layers, mean_jacobians(sub_logits, [sub[i] for i in layers]), strict=True))
    # not per-token feedback (vit_mini), which stands for no one Jacobian
    return {f"wb_angle/{name}": angle_degrees(b, jac[i]) for name, (i, b) in pairs.items() if jac[i].shape == b.shape}


def stream_norms(out: dict[str, torch.Tensor], i: int, h: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Layer i's residual-stream and gradient norms into `out` (means, the gradient's quantiles and its support
    above each SUPPORT_TAUS); returns the per-sample gradient norms."""
    g_norms = per_sample(g).norm(dim=-1)
    out[f"h_norm/l{i}"] = per_sample(h).norm(dim=-1).mean()
    out[f"g_norm/l{i}"] = g_norms.mean()
    qs = torch.tensor([q / 100 for q in QUANTILES], dtype=g.dtype, device=g.device)
    out.update({f"g_p{q}/l{i}": v for q, v in zip(QUANTILES, torch.quantile(g_norms, qs), strict=True)})
    out.update({f"support/l{i}/{tau}": (g_norms > float(tau)).to(g.dtype).mean() for tau in SUPPORT_TAUS})
    return g_norms


def deep_means(out: dict, deep: list[int], active_cos: dict[str, list]) -> dict[str, torch.Tensor]:
    """The summaries over the deep layers: deep_cos, deep_rho, deep_nudge and deep_cos_active/<tau>."""
    means = {f"deep_{name}": torch.stack([out[f"{name}/l{i}"] for i in deep]).mean()
             for name in ("cos", "rho", "nudge")}
    means.update({f"deep_cos_active/{tau}": torch.stack(vals).mean() for tau, vals in active_cos.items() if vals})
    return means
