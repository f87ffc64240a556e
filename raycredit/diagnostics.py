"""Credit diagnostics on a fixed probe batch (SPEC §5).

Metric names (one table for the whole project; i = 0..L, l0 = embedding output):

| name | meaning |
|---|---|
| `cos/l{i}` | mean over probe samples of cosine(a_i, dCE_n/dh_i), true gradient from a connected forward graph |
| `deep_cos` | mean of `cos/l{i}` over the deep layers i = 1..L whose credit the rule estimates (below) |
| `rho/l{i}` | Pearson corr. over samples x `rho_dirs` unit directions u of eps<a_i, u> and CE(h_i+eps u) - CE(h_i) |
| `deep_rho` | mean of `rho/l{i}` over the same layers |
| `nudge/l{i}` | mean CE after h_i -> h_i - eta * a_i / RMS(a_i), minus mean CE before (negative = credit descends) |
| `h_norm/l{i}` | mean ||h_i|| |
| `g_norm/l{i}` | mean ||dCE_n/dh_i|| (per-sample cross-entropy) |
| `h_norm/last`, `g_norm/last` | the same at the last layer h_L, under one name for every depth |
| `mode1a` | 1 when ||h_L|| has grown >= 100x over its value at init (residual-stream growth) |
| `mode1b` | 1 when ||g_L|| < 1e-7 (gradient-floor collapse) |
| `train_loss`, `train_acc` | mean CE and accuracy over the epoch's training mini-batches |
| `test_loss`, `test_acc` | CE and accuracy on the whole test set |
| `diverged` | 1 when the loss or activations became non-finite (or ||h|| > 1e30); the trial stops |
| `epoch`, `time_s` | epoch index (1-based), wall seconds since the start of the run |

A rule's exact layers (`Rule.exact_layers`: h_L for fa with fa_mode=reference and for state_bridge,
whose a_L is the exact output-local gradient) are left out of `deep_cos` and `deep_rho`, so that an exact
last layer does not lift a summary meant to measure estimated credit; when every deep layer is exact
(`bp`), the summary is over all of them. Every `cos/l{i}` is still logged.
Rules without credit (`frozen`) report no `cos`, `rho` or `nudge`. The
diagnostic forward passes run on a float64 copy by default so that rho is not
limited by float32 round-off.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from raycredit.config import DiagConfig
from raycredit.rules.base import Rule, per_sample, rms_normalize

MODE1A_GROWTH = 100.0
MODE1B_FLOOR = 1e-7


def to_floats(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """Scalar tensors to Python floats with a single host sync."""
    return dict(zip(values, torch.stack([v.double() for v in values.values()]).tolist(), strict=True))


def per_sample_cos(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    tiny = torch.finfo(a.dtype).tiny
    a, g = per_sample(a), per_sample(g)
    return (a * g).sum(-1) / (a.norm(dim=-1) * g.norm(dim=-1)).clamp_min(tiny)


def pearson(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    u, v = u - u.mean(), v - v.mean()
    return (u * v).sum() / (u.norm() * v.norm())


@torch.no_grad()
def perturbation_rho(model, i: int, h: torch.Tensor, a: torch.Tensor, y: torch.Tensor,
                     dirs: int, eps: float, gen: torch.Generator, chunk: int = 8) -> torch.Tensor:
    """Pearson correlation of predicted eps<a, u> and measured per-sample CE change along unit directions u."""
    base = F.cross_entropy(model.forward_from(i, h), y, reduction="none")
    preds, meas = [], []
    for start in range(0, dirs, chunk):
        m = min(chunk, dirs - start)
        u = torch.randn((m, len(h), h[0].numel()), generator=gen, device=h.device, dtype=h.dtype)
        u = u / u.norm(dim=-1, keepdim=True)
        hp = h.unsqueeze(0) + eps * u.view(m, *h.shape)
        lp = F.cross_entropy(model.forward_from(i, hp.flatten(0, 1)), y.repeat(m), reduction="none").view(m, -1)
        meas.append((lp - base).flatten())
        preds.append((eps * (u * per_sample(a).unsqueeze(0)).sum(-1)).flatten())
    return pearson(torch.cat(preds), torch.cat(meas))


@torch.no_grad()
def nudge(model, i: int, h: torch.Tensor, a: torch.Tensor, y: torch.Tensor, eta: float) -> torch.Tensor:
    before = F.cross_entropy(model.forward_from(i, h), y)
    after = F.cross_entropy(model.forward_from(i, h - eta * rms_normalize(a)), y)
    return after - before


def probe_forward(model, x: torch.Tensor, y: torch.Tensor):
    """Connected forward from a leaf h_0: (hs, logits, true per-sample gradients dCE_n/dh_i)."""
    h0 = model.embed(x).detach().requires_grad_()
    hs = [h0]
    for l in range(1, model.L + 1):
        hs.append(model.step(l, hs[-1], model.f(l, hs[-1])))
    logits = model.head(hs[-1])
    grads = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), hs, retain_graph=True)
    return hs, logits, [g.detach() for g in grads]


def summary_layers(L: int, exact: frozenset[int]) -> list[int]:
    """The deep layers that deep_cos and deep_rho average: 1..L less the exact ones, or all when all are exact."""
    estimated = [i for i in range(1, L + 1) if i not in exact]
    return estimated or list(range(1, L + 1))


def diagnose(model, rule: Rule, x: torch.Tensor, y: torch.Tensor, cfg: DiagConfig, *,
             seed: int, h_norm_init: float | None = None, credits=None) -> dict[str, float]:
    """All SPEC §5 credit diagnostics of (model, rule) on the probe batch (x, y).

    `credits` overrides the rule's credit (calibration tests pass a random vector here).
    """
    dtype = getattr(torch, cfg.diag_dtype)
    m = copy.deepcopy(model).to(dtype).eval()
    r = copy.deepcopy(rule).to(dtype)
    for p in m.parameters():
        p.requires_grad_(False)
    x = x.to(dtype)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    with torch.enable_grad():
        hs, logits, g = probe_forward(m, x, y)
        if credits is None:
            credits = r.credits(m, hs, logits, y)
    hs = [h.detach() for h in hs]
    out: dict[str, torch.Tensor] = {}
    L = m.L
    for i in range(L + 1):
        out[f"h_norm/l{i}"] = per_sample(hs[i]).norm(dim=-1).mean()
        out[f"g_norm/l{i}"] = per_sample(g[i]).norm(dim=-1).mean()
        if credits is not None:
            a = credits[i].to(dtype)
            out[f"cos/l{i}"] = per_sample_cos(a, g[i]).mean()
            out[f"rho/l{i}"] = perturbation_rho(m, i, hs[i], a, y, cfg.rho_dirs, cfg.rho_eps, gen)
            out[f"nudge/l{i}"] = nudge(m, i, hs[i], a, y, cfg.nudge_eta)
    if credits is not None:
        deep = summary_layers(L, r.exact_layers())
        out["deep_cos"] = torch.stack([out[f"cos/l{i}"] for i in deep]).mean()
        out["deep_rho"] = torch.stack([out[f"rho/l{i}"] for i in deep]).mean()
    vals = to_floats(out)
    vals["h_norm/last"], vals["g_norm/last"] = vals[f"h_norm/l{L}"], vals[f"g_norm/l{L}"]
    hL = vals[f"h_norm/l{L}"]
    vals["mode1a"] = float(h_norm_init is not None and hL >= MODE1A_GROWTH * h_norm_init)
    vals["mode1b"] = float(vals[f"g_norm/l{L}"] < MODE1B_FLOOR)
    return vals
