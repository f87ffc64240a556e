"""Exploitability of a snapshot (the seeds' phases 6A, 6.5A and 7A): how much does stepping along a rule's
credit lower the loss, on the batch it was computed on and on held-out data?

From the snapshot (a branch start: `raycredit.lineage`), for each of `exploit_batches` training mini-batches
B and each step size eta, k = 1..max(exploit_steps) local steps are taken on B: the blocks (all, or the
last) move by plain gradient steps theta_l <- theta_l - eta * grad_theta_l mean_n <f_l(h_{l-1}), a_l>, with
h_{l-1} detached and a_l the rule's credit recomputed on the current weights at every step (bp: the true
per-sample gradient dCE_n/dh_l, for which this is exactly a gradient step on the blocks), normalized per
sample with credit_norm. The embedding, the head and the rule's auxiliary nets stay as they are.

Logged per k and eta (`exploit/<name>/k<k>/eta<eta>`), over the batches:

| name | meaning |
|---|---|
| `dL_same` | mean of CE_B(after) - CE_B(before): the loss change on the batch the steps were computed on |
| `dL_same_std` | its sample std (ddof=1) over the batches |
| `dL_held` | mean of the change of the mean CE over the first `exploit_held_out` test examples |
| `dL_held_std` | its sample std (ddof=1) |
| `pur` | dL_held / dL_same (means): the fraction of the same-batch decrease that carries to held-out data |
| `upd_var` | E_B ||dtheta_B - mean dtheta||^2 / ||mean dtheta||^2: the relative variance of the parameter update |

| `diverged` | the batches whose loss or weights became non-finite by step k (left out of the means above) |

and per k, the line search's best eta (lowest dL_same among the etas where no batch diverged):
`exploit/best_eta/k<k>` (NaN when every eta diverged), `exploit/best_eta_edge/k<k>` (1 when it is the grid's
smallest or largest eta: the line search may not have bracketed the optimum), with `exploit/dL_same/k<k>`,
`exploit/dL_held/k<k>` and `exploit/pur/k<k>` at it, and `exploit/diverged/k<k>`, the etas with a divergence.
A divergence is a measured outcome, never an error. `exploit_clamp` > 0 clamps every gradient element before
the step (the seeds' phase 6A clamped; 6.5A, the default, does not). The snapshot's own credit diagnostics
(deep_cos = the seeds' Gamma, deep_rho, nudge, ...) are logged beside them (`raycredit.diagnostics`). Forward
passes run in float64 on every device, so small loss changes are not float32 round-off.
"""

from __future__ import annotations

import copy
import math

import torch

from raycredit.data import Data
from raycredit.diagnostics import diagnose, probe_forward
from raycredit.knobs import number_list
from raycredit.rules.base import dot, rms_normalize, task_loss
from raycredit.train import diag_seed, restore


def eta_name(eta: float) -> str:
    return f"{eta:g}"


def mean_ce(model, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return task_loss(model(x), y).item()


def local_step(model, credit_fn, x: torch.Tensor, y: torch.Tensor, blocks: list[int], eta: float,
               normalize: bool, clamp: float = 0.0) -> None:
    """One step of the blocks `blocks` (1-based) along the credit that credit_fn(model, hs, logits, y) gives;
    clamp > 0 clamps every gradient element to [-clamp, clamp] first (the seeds' phase 6A)."""
    with torch.enable_grad():
        hs, logits, _ = probe_forward(model, x, y)
        a = [ai.detach() for ai in credit_fn(model, hs, logits, y)]
        if normalize:
            a = [rms_normalize(ai) for ai in a]
        params = [p for l in blocks for p in model.blocks[l - 1].parameters()]
        objective = sum(dot(model.f(l, hs[l - 1].detach()), a[l]).mean() for l in blocks)
        grads = torch.autograd.grad(objective, params)
    with torch.no_grad():
        for p, g in zip(params, grads, strict=True):
            p.sub_(eta * (g.clamp(-clamp, clamp) if clamp > 0 else g))


def flat_blocks(model, blocks: list[int]) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for l in blocks for p in model.blocks[l - 1].parameters()])


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std (ddof=1) of the finite values; NaN where there are too few."""
    finite = [v for v in values if math.isfinite(v)]
    mean = math.fsum(finite) / len(finite) if finite else math.nan
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in finite) / (len(finite) - 1)) if len(finite) > 1 else math.nan
    return mean, std


def measure(model, credit_fn, batches: list[tuple[torch.Tensor, torch.Tensor]], held: tuple[torch.Tensor, torch.Tensor],
            blocks: list[int], etas: list[float], ks: list[int], normalize: bool,
            clamp: float = 0.0) -> dict[str, float]:
    """The table of the module docstring for one snapshot `model` and credit. A batch whose loss or weights
    become non-finite is a measured divergence: counted (`diverged`), left out of the means, and its point (k,
    eta) left out of the line search."""
    out: dict[str, float] = {}
    held_before = mean_ce(model, *held)
    theta0 = flat_blocks(model, blocks)
    for eta in etas:
        same: dict[int, list[float]] = {k: [] for k in ks}
        heldout: dict[int, list[float]] = {k: [] for k in ks}
        updates: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
        diverged = dict.fromkeys(ks, 0)
        for x, y in batches:
            m = copy.deepcopy(model)
            before = mean_ce(m, x, y)
            for step in range(1, max(ks) + 1):
                local_step(m, credit_fn, x, y, blocks, eta, normalize, clamp)
                theta = flat_blocks(m, blocks)
                after = mean_ce(m, x, y)
                if not (math.isfinite(after) and bool(torch.isfinite(theta).all())):
                    for k in ks:  # this step and every later one diverged
                        diverged[k] += k >= step
                    break
                if step in same:
                    same[step].append(after - before)
                    heldout[step].append(mean_ce(m, *held) - held_before)
                    updates[step].append(theta - theta0)
        for k in ks:
            tag = f"k{k}/eta{eta_name(eta)}"
            (ds, ds_std), (dh, dh_std) = mean_std(same[k]), mean_std(heldout[k])
            out[f"exploit/dL_same/{tag}"], out[f"exploit/dL_same_std/{tag}"] = ds, ds_std
            out[f"exploit/dL_held/{tag}"], out[f"exploit/dL_held_std/{tag}"] = dh, dh_std
            out[f"exploit/pur/{tag}"] = dh / ds if ds and math.isfinite(ds) else math.nan
            out[f"exploit/diverged/{tag}"] = float(diverged[k])
            out[f"exploit/upd_var/{tag}"] = math.nan
            if updates[k]:
                u = torch.stack(updates[k])
                mean_u = u.mean(0)
                out[f"exploit/upd_var/{tag}"] = ((u - mean_u).pow(2).sum(1).mean()
                                                 / mean_u.pow(2).sum().clamp_min(1e-300)).item()
    for k in ks:
        out[f"exploit/diverged/k{k}"] = sum(out[f"exploit/diverged/k{k}/eta{eta_name(e)}"] > 0 for e in etas)
        kept = [e for e in etas if out[f"exploit/diverged/k{k}/eta{eta_name(e)}"] == 0
                and math.isfinite(out[f"exploit/dL_same/k{k}/eta{eta_name(e)}"])]
        if not kept:
            out[f"exploit/best_eta/k{k}"] = math.nan
            continue
        best = min(kept, key=lambda e: out[f"exploit/dL_same/k{k}/eta{eta_name(e)}"])
        tag = f"k{k}/eta{eta_name(best)}"
        out[f"exploit/best_eta/k{k}"] = best
        out[f"exploit/best_eta_edge/k{k}"] = float(len(etas) > 1 and best in (min(etas), max(etas)))
        for name in ("dL_same", "dL_held", "pur"):
            out[f"exploit/{name}/k{k}"] = out[f"exploit/{name}/{tag}"]
    return out


def exploitability(start: dict, data: Data, device: torch.device | str = "cpu") -> dict[str, float]:
    """The exploitability table (module docstring) and the credit diagnostics of the snapshot `start` (a
    checkpoint of the exploitability config, e.g. `lineage.branch_start`)."""
    cfg, model, rule, data = restore(start, data)
    dtype = torch.float64  # small loss changes must not be float32 round-off
    model, rule = model.to(device, dtype).eval(), rule.to(device, dtype)
    for p in model.parameters():
        p.requires_grad_(True)
    ex, epoch = cfg.exploit, start["epoch"]
    gen = torch.Generator().manual_seed(diag_seed(cfg, epoch) + 1)  # not the diagnostics' directions
    n, bs = len(data.y_train), min(cfg.train.batch_size, len(data.y_train))
    batches = []
    for _ in range(ex.exploit_batches):
        idx = torch.randperm(n, generator=gen)[:bs]
        batches.append((data.x_train[idx].to(device, dtype), data.y_train[idx].to(device)))
    held = (data.x_test[: ex.exploit_held_out].to(device, dtype), data.y_test[: ex.exploit_held_out].to(device))
    blocks = list(range(1, cfg.model.L + 1)) if ex.exploit_blocks == "all" else [cfg.model.L]
    etas = number_list("exploit_etas", ex.exploit_etas, float, lo=0.0)
    ks = number_list("exploit_steps", ex.exploit_steps, int, lo=1)
    out = measure(model, rule.credits, batches, held, blocks, etas, ks, cfg.rule.credit_norm, ex.exploit_clamp)
    probe = (data.x_test[: cfg.diag.probe_size].to(device), data.y_test[: cfg.diag.probe_size].to(device))
    out.update(diagnose(model, rule, *probe, cfg.diag, seed=diag_seed(cfg, epoch), h_norm_init=start["h_norm_init"]))
    return out

