"""Training throughput, measured side by side in one process.

Data: the synthetic task shaped like CIFAR (50k x 3072 inputs, 10 classes); model: ResMLP d=256, L=4.

1. loop: samples/s of raycredit's `train(cfg)` (data resident on the device, randperm batches, metrics
   accumulated on the device and read once per epoch, fused Adam on CUDA) against a reference-style loop
   (a DataLoader over a host TensorDataset, a host-to-device copy per batch, the loss read back with
   `.item()` every step), for bp, fa and dfa; both run the same model, rule and update.
2. variants: bp in fp32, in bf16 autocast and under torch.compile, same seed and epochs: speed and accuracy.
3. engine: the same configs as Ray Tune trials (one at a time, logging every epoch to a scratch SQLite
   MLflow store) against `train(cfg)` called directly: overhead per trial.
4. packing (CUDA only): aggregate samples/s of 1, 2, 4 and 8 concurrent trials sharing one GPU.
5. population: P dfa members (seeds 0..P-1) trained as one population against the same P configs trained
   one after another with `train(cfg)`: wall time, seconds per member run, and how far their results differ.

    python benchmarks/throughput.py                                   # all of it
    python benchmarks/throughput.py --n-train 10000 --skip engine     # quicker
    python benchmarks/throughput.py --skip loop,variants,engine,packing --population 4   # population only

Prints markdown tables headed by the hardware, and writes them with the raw figures to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raycredit.config import Config  # noqa: E402
from raycredit.data import load_data  # noqa: E402
from raycredit.models import build_model  # noqa: E402
from raycredit.population import train_population  # noqa: E402
from raycredit.rules import build_rule  # noqa: E402
from raycredit.train import resolve_device, train  # noqa: E402


def config(args, rule: str, device: str, **kw) -> Config:
    epochs = kw.pop("epochs", args.epochs)
    return Config.from_dict(dict(
        rule=rule, dataset="synthetic", input_dim=3072, n_train=args.n_train, n_test=args.n_test, d=256, L=4,
        epochs=epochs, batch_size=args.batch_size, diag_every=epochs, probe_size=256, rho_dirs=8, device=device,
        **{"seed": 0, **kw}))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reference_loop(cfg: Config, data, device: torch.device) -> tuple[float, list[float]]:
    """The reference study's style of loop over the same model, rule and update.
    Returns (final test accuracy, seconds of each epoch: training and the test evaluation)."""
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, data.in_shape, data.n_classes, cfg.data.alpha).to(device)
    rule = build_rule(cfg, model, data.n_classes).to(device)
    rule.generator = torch.Generator(device=device).manual_seed(cfg.train.seed)
    params = rule.trainable_params(model)
    opt = torch.optim.Adam(params, lr=cfg.train.lr)
    train_loader = DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=cfg.train.batch_size,
                              shuffle=True)
    test_loader = DataLoader(TensorDataset(data.x_test, data.y_test), batch_size=1000)
    acc, seconds = 0.0, []
    for _ in range(cfg.train.epochs):
        t0 = time.perf_counter()
        model.train()
        losses = []
        for x, y in train_loader:
            x, y = x.to(device), y.to(device)
            opt.zero_grad()
            objective, ce, _ = rule.loss(model, x, y)
            objective.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.train.clip_norm)
            opt.step()
            losses.append(ce.item())
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in test_loader:
                correct += (model(x.to(device)).argmax(1) == y.to(device)).sum().item()
        acc = correct / len(data.y_test)
        seconds.append(time.perf_counter() - t0)
    return acc, seconds


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def bench_loops(args, device: torch.device, host_data, results: dict) -> list[str]:
    """Per-epoch throughput (training and the test evaluation) over all epochs but the last: raycredit's last
    epoch also runs the diagnostics, which the reference-style loop does not have. Needs --epochs >= 2."""
    dev_data = host_data.to(device)
    warm = replace(dev_data, x_train=dev_data.x_train[:1024], y_train=dev_data.y_train[:1024])
    train(config(args, "bp", str(device), epochs=1), data=warm)  # CUDA and cuBLAS start-up, untimed
    rows = ["| rule | raycredit samples/s | reference-style samples/s | ratio | raycredit test_acc "
            "| reference test_acc |", "|---|---|---|---|---|---|"]
    for rule in args.rules:
        cfg = config(args, rule, str(device))
        history = train(cfg, data=dev_data)["history"]
        ends = [0.0] + [h["time_s"] for h in history]
        ours = [b - a for a, b in zip(ends, ends[1:], strict=False)]
        ref_acc, ref = reference_loop(cfg, host_data, device)
        sync(device)
        steady = len(ours) - 1
        rate_ours = args.n_train * steady / sum(ours[:steady])
        rate_ref = args.n_train * steady / sum(ref[:steady])
        acc = history[-1]["test_acc"]
        results["loop"][rule] = dict(raycredit_epoch_s=ours, reference_epoch_s=ref, raycredit_acc=acc,
                                     reference_acc=ref_acc)
        rows.append(f"| {rule} | {rate_ours:,.0f} | {rate_ref:,.0f} | {rate_ours / rate_ref:.2f}x | {acc:.3f} "
                    f"| {ref_acc:.3f} |")
        print(rows[-1], flush=True)
    return rows


def bench_variants(args, device: torch.device, host_data, results: dict) -> list[str]:
    """bp in fp32, in bf16 autocast and compiled: speed and accuracy after the same epochs and seed."""
    dev_data = host_data.to(device)
    rows = ["| bp variant | samples/s (first epoch includes compilation) | test_acc |", "|---|---|---|"]
    for name, kw in (("fp32", {}), ("bf16", {"precision": "bf16"}), ("fp32 compiled", {"compile": True})):
        cfg = config(args, "bp", str(device), **kw)
        acc, t = timed(lambda cfg=cfg: train(cfg, data=dev_data)["final"]["test_acc"])
        results["variants"][name] = dict(seconds=t, test_acc=acc)
        rows.append(f"| {name} | {args.n_train * args.epochs / t:,.0f} | {acc:.4f} |")
        print(rows[-1], flush=True)
    v = results["variants"]
    rows += ["", f"|bf16 - fp32| test_acc = {abs(v['bf16']['test_acc'] - v['fp32']['test_acc']):.4f}; "
                 f"|compiled - eager| test_acc = {abs(v['fp32 compiled']['test_acc'] - v['fp32']['test_acc']):.4f}"]
    return rows


def sweep(configs: list[Config], tmp: str, name: str, cpus: float, gpus: float) -> float:
    from raycredit import engine, tracking

    uri = f"sqlite:///{tmp}/mlflow.db"
    settings = engine.SweepSettings(search=name, experiment_id=tracking.ensure_experiment(uri, name),
                                    tracking_uri=uri, code_version="bench", cpus_per_trial=cpus, gpus_per_trial=gpus)
    t0 = time.perf_counter()
    status = engine.run_trials(configs, settings, name=name, storage=f"{tmp}/ray", max_failures=0)
    wall = time.perf_counter() - t0
    assert set(status.values()) == {"FINISHED"}, status
    return wall


def bench_engine(args, device: torch.device, results: dict) -> list[str]:
    """The configs as one sweep, and the first alone as a sweep of one trial: the difference separates the
    sweep's fixed start-up (Tune, the trial actor's process and imports) from each further trial's overhead."""
    import ray

    on_gpu = device.type == "cuda"
    configs = [config(args, rule, "auto", epochs=args.engine_epochs) for rule in args.rules]
    direct = []
    for cfg in configs:
        _, t = timed(lambda cfg=cfg: train(cfg.replace(device=str(device))))
        direct.append(t)
    cpus = os.cpu_count() or 1
    ray.init(address="local", num_cpus=cpus, num_gpus=int(on_gpu), include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory(prefix="raycredit-bench-") as tmp:
        one = sweep(configs[:1], tmp, "engine1", cpus, 1.0 if on_gpu else 0.0)
        wall = sweep(configs, tmp, "engine", cpus, 1.0 if on_gpu else 0.0)
    n = len(configs)
    overhead = (wall - sum(direct)) / n
    further = (wall - one - sum(direct[1:])) / (n - 1) if n > 1 else float("nan")
    fixed = one - direct[0] - further
    results["engine"] = dict(direct_s=direct, sweep_wall_s=wall, one_trial_sweep_s=one, overhead_per_trial_s=overhead,
                             overhead_per_further_trial_s=further, fixed_sweep_overhead_s=fixed)
    mean = sum(direct) / n
    return ["| trials | train(cfg) per trial | Tune + MLflow per trial | overhead per trial | of which fixed per sweep "
            "| overhead of each further trial |", "|---|---|---|---|---|---|",
            f"| {n} ({', '.join(args.rules)}; {args.engine_epochs} epochs) | {mean:.1f} s | {wall / n:.1f} s "
            f"| {overhead:.1f} s ({100 * overhead / mean:.0f}%) | {fixed:.1f} s "
            f"| {further:.1f} s ({100 * further / mean:.0f}%) |"]


def bench_packing(args, device: torch.device, results: dict) -> list[str]:
    if device.type != "cuda":
        return ["skipped: no CUDA device"]
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_gpus=1, include_dashboard=False, log_to_driver=False)
    cpus = float(ray.cluster_resources().get("CPU", 1))
    rows = ["| trials per GPU | aggregate samples/s | vs 1 trial |", "|---|---|---|"]
    base = None
    for k in args.packing:
        configs = [config(args, "dfa", "auto", epochs=args.engine_epochs, seed=s) for s in range(k)]
        with tempfile.TemporaryDirectory(prefix="raycredit-bench-") as tmp:
            wall = sweep(configs, tmp, f"pack{k}", cpus / k, 1.0 / k)
        rate = k * args.n_train * args.engine_epochs / wall
        base = base or rate
        results["packing"][k] = dict(wall_s=wall, samples_per_s=rate)
        rows.append(f"| {k} | {rate:,.0f} | {rate / base:.2f}x |")
        print(rows[-1], flush=True)
    return rows


def bench_population(args, device: torch.device, host_data, results: dict) -> list[str]:
    """P dfa members in one population against the same configs trained one after another."""
    dev_data = host_data.to(device)
    rows = ["| P | population wall | per member run | separate runs wall | per run | speed-up "
            "| max abs(delta test_acc) |", "|---|---|---|---|---|---|---|"]
    for P in args.population:
        cfgs = [config(args, "dfa", str(device), seed=s) for s in range(P)]
        pop, t_pop = timed(lambda cfgs=cfgs: train_population(cfgs, data=[dev_data] * len(cfgs)))
        sync(device)
        sep, t_sep = timed(lambda cfgs=cfgs: [train(c, data=dev_data) for c in cfgs])
        sync(device)
        delta = max(abs(a["final"]["test_acc"] - b["final"]["test_acc"]) for a, b in zip(pop, sep, strict=True))
        results["population"][P] = dict(population_s=t_pop, separate_s=t_sep, max_abs_delta_test_acc=delta,
                                        epochs=args.epochs)
        rows.append(f"| {P} | {t_pop:.1f} s | {t_pop / P:.2f} s | {t_sep:.1f} s | {t_sep / P:.2f} s "
                    f"| {t_sep / t_pop:.2f}x | {delta:.4f} |")
        print(rows[-1], flush=True)
    rows += ["", f"{args.epochs} epochs per run, diagnostics at the last; per 100-epoch run, scale by "
                 f"{100 / args.epochs:g} (an extrapolation: only the last epoch runs the diagnostics)"]
    return rows


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, {os.cpu_count()} CPU cores, torch {torch.__version__}"
    return f"CPU only: {os.cpu_count()} cores ({platform.processor() or platform.machine()}), torch {torch.__version__}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:i]")
    p.add_argument("--n-train", type=int, default=50_000)
    p.add_argument("--n-test", type=int, default=10_000)
    p.add_argument("--epochs", type=int, default=2, help="epochs of the loop and variant comparisons (>= 2)")
    p.add_argument("--engine-epochs", type=int, default=2, help="epochs of each engine and packing trial")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--rules", type=lambda s: s.split(","), default=["bp", "fa", "dfa"])
    p.add_argument("--packing", type=lambda s: [int(k) for k in s.split(",")], default=[1, 2, 4, 8])
    p.add_argument("--population", type=lambda s: [int(k) for k in s.split(",")], default=[8, 32],
                   help="population sizes P to compare with P separate runs")
    p.add_argument("--skip", type=lambda s: s.split(","), default=[], help="comma-separated sections to skip")
    p.add_argument("--out", default="benchmarks/results/throughput.json")
    args = p.parse_args()
    if args.epochs < 2:
        p.error("--epochs must be >= 2: the loop comparison times every epoch but the last")
    device = resolve_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    results: dict = {"hardware": hardware(device), "args": vars(args), "loop": {}, "variants": {}, "packing": {},
                     "population": {}}
    print(f"hardware: {results['hardware']}\n", flush=True)
    host_data = load_data(config(args, "bp", "cpu").data)
    sections = {"loop": lambda: bench_loops(args, device, host_data, results),
                "variants": lambda: bench_variants(args, device, host_data, results),
                "engine": lambda: bench_engine(args, device, results),
                "packing": lambda: bench_packing(args, device, results),
                "population": lambda: bench_population(args, device, host_data, results)}
    report = [f"hardware: {results['hardware']}"]
    for name, run in sections.items():
        if name in args.skip:
            continue
        print(f"## {name}", flush=True)
        rows = run()
        report += ["", f"## {name}", "", *rows]
        print("\n".join(rows) + "\n", flush=True)
    results["report"] = "\n".join(report)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1, default=str))
    print(results["report"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
