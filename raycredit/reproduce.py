"""One command reproduces the reference study: its searches as the stages of one resumable driver, then the
verdicts (analysis/verify.py) over what they logged.

A stage is one search script run with one of its presets into the experiment `<prefix>-<stage>` (prefix:
`reproduce-<preset>`); stages run in the preset's order, and each search runs its own lineage stages (trunks
before branches). Re-running the same command skips the stages whose every run has finished and resumes the
others (each search's own guarantees: nothing trains twice); Ctrl-C or a killed driver at any point loses
nothing. The driver starts no Ray itself: the first stage's search starts (or joins) it as it would alone, and
the later stages use the same instance (`engine.kept`), stopped once the last stage has run.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from raycredit.errors import UserError
from raycredit.flags import OneLineParser, add_tracking_uri
from raycredit.interrupts import INTERRUPTED

SEARCHES = Path(__file__).resolve().parents[1] / "searches"


@dataclass(frozen=True)
class Stage:
    """A search (searches/<search>.py) run with its `preset` and extra flags (`args`, e.g. more seeds)."""

    search: str
    preset: str
    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class Plan:
    """A reproduction preset: its stages in order, and what it is."""

    doc: str
    stages: tuple[Stage, ...]


def load_search(name: str):
    path = SEARCHES / f"{name}.py"
    if not path.is_file():
        raise UserError(f"stage {name!r}: no search script {path} (raycredit reproduce needs the repository's "
                        "searches/ folder: an editable install, `pip install -e .`)")
    spec = importlib.util.spec_from_file_location(f"search_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def parser(doc: str, presets: dict[str, Plan]) -> argparse.ArgumentParser:
    p = OneLineParser(prog="reproduce.py", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=list(presets), default="smoke",
                   help="the stages' size (default smoke): " + "; ".join(f"{k}: {v.doc}" for k, v in presets.items()))
    p.add_argument("--list", action="store_true", help="print the stages with their trial counts and exit")
    p.add_argument("--estimate", action="store_true",
                   help="print the plan with its estimated cost (one epoch of each stage timed here) and exit")
    p.add_argument("--only", help="comma-separated stages to run (default: all)")
    p.add_argument("--skip", help="comma-separated stages not to run")
    p.add_argument("--experiment", help="prefix of the stages' MLflow experiments (default reproduce-<preset>)")
    add_tracking_uri(p)
    p.add_argument("--storage", default="ray_results", help="Ray Tune storage path (shared on multi-node clusters)")
    p.add_argument("--out", help="report folder (default reports/<prefix>)")
    p.add_argument("--address", help="Ray cluster: host:port or 'auto' (default: a new local instance per stage)")
    p.add_argument("--data-dir", help="dataset folder (cifar) for the stages that read one")
    p.add_argument("--gpus-per-trial", type=float, default=0.25, help="fractional GPUs per trial (default 0.25)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial (default 1)")
    p.add_argument("--strict", action="store_true", help="exit 1 when a claim is CONTRADICTED")
    p.add_argument("-v", "--verbose", action="store_true", help="the searches' verbose output")
    return p


@dataclass(frozen=True)
class Planned:
    name: str
    stage: Stage
    module: object
    configs: list
    argv: list[str]

    def epochs(self, rule: str | None = None) -> int:
        """Epochs trained (by `rule`'s configs): a branch trains from its parent's epoch on, a measurement of a
        snapshot trains none."""
        return sum(trained_epochs(c) for c in self.configs if rule is None or c.rule.rule == rule)


def trained_epochs(c) -> int:
    if c.exploit.exploitability:
        return 0
    return max(0, c.train.epochs - (c.lineage.parent_epoch if c.lineage.parent_run else 0))


def chosen(names: list[str], only: str | None, skip: str | None) -> list[str]:
    picked = names
    for flag, value in (("--only", only), ("--skip", skip)):
        if value is None:
            continue
        given = [s.strip() for s in value.split(",") if s.strip()]
        unknown = [s for s in given if s not in names]
        if unknown or not given:
            raise UserError(f"{flag} {value!r}: unknown stage {unknown[0] if unknown else '(none)'}; the stages: "
                            + ", ".join(names))
        picked = [s for s in picked if (s in given) == (flag == "--only")]
    return picked


def plan(args, presets: dict[str, Plan], prefix: str, out: Path) -> list[Planned]:
    """Every chosen stage's configs, validated (bad input: UserError before anything runs)."""
    from raycredit.data import check_data
    from raycredit.flags import overrides_from, search_parser
    from raycredit.search import expand

    stages = {s.search: s for s in presets[args.preset].stages}
    out_plan = []
    for name in chosen(list(stages), args.only, args.skip):
        stage = stages[name]
        module = load_search(name)
        argv = ["--preset", stage.preset, *stage.args, "--experiment", f"{prefix}-{name}",
                "--storage", args.storage, "--out", str(out / name), "--gpus-per-trial", str(args.gpus_per_trial),
                "--cpus-per-trial", str(args.cpus_per_trial)]
        for flag, value in (("--tracking-uri", args.tracking_uri), ("--address", args.address),
                            ("--data-dir", args.data_dir)):
            if value is not None:
                argv += [flag, value]
        if args.verbose:
            argv.append("-v")
        parsed = search_parser(name, module.__doc__, module.PRESETS, stage.preset).parse_args(argv)
        configs = expand(module.PRESETS[stage.preset], overrides_from(parsed))
        for data_cfg in {c.data for c in configs}:
            check_data(data_cfg)
        out_plan.append(Planned(name, stage, module, configs, argv))
    return out_plan


def stage_cost(p: Planned, uri: str, prefix: str, threads: int) -> tuple[float, str]:
    """Trial-seconds a stage has left to train: from its finished runs in the store when there are any (their
    mean time per run, for the runs not finished), else each of its rules timed here for 3 epochs from scratch
    (a plain epoch, plus the diagnostics of the last one spread over diag_every epochs) times its epochs, on
    `threads` torch threads (a trial's)."""
    from raycredit import tracking
    from raycredit.tracking.results import results

    if tracking.existing_experiment(uri, f"{prefix}-{p.name}") is not None:
        done = results(f"{prefix}-{p.name}", uri)
        if not done.empty and "time_s" in done:
            left = len({c.key() for c in p.configs} - set(done["run_key"]))
            per_run = float(done["time_s"].mean())
            return per_run * left, f"{left} runs left at {per_run:.1f} s each, measured on {len(done)} finished runs"
    import torch

    from raycredit.rules import make_config
    from raycredit.train import train

    total, timed, before = 0.0, [], torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for rule in dict.fromkeys(c.rule.rule for c in p.configs if trained_epochs(c)):
            first = next(c for c in p.configs if c.rule.rule == rule and trained_epochs(c))
            cfg = make_config({**first.flat(), "epochs": 3, "keep_epochs": "", "parent_run": "", "parent_epoch": 0,
                               "prefit_epochs": 0})
            t = [m["time_s"] for m in train(cfg)["history"]]
            plain = t[1] - t[0]
            per_epoch = plain + max(0.0, t[2] - t[1] - plain) / cfg.diag.diag_every
            total += per_epoch * p.epochs(rule)
            timed.append(f"{rule} {per_epoch:.2f}")
    finally:
        torch.set_num_threads(before)
    return total, "s/epoch timed here: " + ", ".join(timed)


def print_plan(planned: list[Planned], uri: str, prefix: str, estimate: bool, threads: int = 1) -> None:
    total = 0.0
    print(f"{'stage':<22}{'search preset':<16}{'trials':>7}{'epochs':>8}" + ("   estimate" if estimate else ""))
    for p in planned:
        line = f"{p.name:<22}{p.stage.preset:<16}{len(p.configs):>7}{p.epochs():>8}"
        if estimate:
            seconds, how = stage_cost(p, uri, prefix, threads)
            total += seconds
            line += f"   {seconds / 60:6.1f} trial-min ({how})"
        print(line, flush=True)
    if estimate:
        print(f"estimated cost: {total / 3600:.2f} trial-hours on this machine (an estimate: per-epoch costs "
              "differ between rules; trials run side by side as Ray's resources allow)", flush=True)


def run_stage(p: Planned) -> int:
    """Run one stage's search; its exit code. A stage whose runs have all finished trains nothing: its search
    only draws its analysis again (it may have been cut short by a kill)."""
    print(f"stage {p.name}: searches/{p.name}.py {' '.join(p.argv)}", flush=True)
    return p.module.main(p.argv)


def run(doc: str, presets: dict[str, Plan], verify, argv: list[str] | None = None) -> int:
    """Entry point of searches/reproduce.py (`raycredit reproduce`); returns the exit code. `verify(tracking uri,
    prefix, report folder, preset=, stages=)` writes the report once every stage has run and returns the count of
    each verdict (analysis/verify.py's `run`)."""
    args = parser(doc, presets).parse_args(argv)
    from raycredit import engine, tracking

    prefix = args.experiment or f"reproduce-{args.preset}"
    out = Path(args.out or Path("reports") / prefix)
    try:
        uri = tracking.normalize_uri(args.tracking_uri)
        planned = plan(args, presets, prefix, out)
        if args.list or args.estimate:
            print_plan(planned, uri, prefix, estimate=args.estimate, threads=max(1, int(args.cpus_per_trial)))
            return 0
        print(f"reproduce: preset {args.preset}, {len(planned)} stages into experiments {prefix}-<stage> at "
              f"{tracking.redact(uri)}", flush=True)
        print_plan(planned, uri, prefix, estimate=True, threads=max(1, int(args.cpus_per_trial)))
        failed, t0 = 0, time.perf_counter()
        with engine.kept():
            for p in planned:
                code = run_stage(p)
                if code in (2, INTERRUPTED):
                    if code == INTERRUPTED:
                        print("reproduce: interrupted; re-run the same command to finish what is missing",
                              file=sys.stderr)
                    return code
                failed += code != 0
        counts = verify(uri, prefix, str(out), preset=args.preset, stages=[p.name for p in planned])
        print(f"reproduce: {len(planned)} stages and the verdicts in {(time.perf_counter() - t0) / 60:.1f} min "
              "(this command's wall time)")
    except UserError as e:
        print(f"reproduce: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("reproduce: interrupted; re-run the same command to finish what is missing", file=sys.stderr)
        return INTERRUPTED
    if failed:
        print(f"reproduce: {failed} stages had failed trials (their tables miss those runs)")
        return 1
    return 1 if args.strict and counts.get("CONTRADICTED") else 0
