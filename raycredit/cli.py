"""`raycredit train`: one run without Ray. Every config knob is a flag; see --help."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from raycredit.errors import UserError
from raycredit.flags import OneLineParser, add_knob_flags, add_tracking_uri


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="raycredit", description="raycredit: sweeps for local credit assignment research")
    sub = p.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    t = sub.add_parser("train", help="train one configuration without Ray and write DIR/result.json",
                       description="Train one configuration; writes DIR/result.json and DIR/checkpoint.pt.")
    t.add_argument("--out", required=True, help="output folder for result.json and checkpoint.pt")
    t.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.pt with the run's own config "
                   "(flags given override it: --epochs N trains on to epoch N)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    from raycredit.rules import RULES  # the registry: the rules are known once they are imported

    add_knob_flags(t, listed={"rule": list(RULES)})
    t.add_argument("--from-run", dest="parent_run", metavar="RUN", help="the same as --parent-run")
    t.add_argument("--from-epoch", dest="parent_epoch", type=int, metavar="E", help="the same as --parent-epoch")
    add_tracking_uri(t)
    dg = sub.add_parser("diagnose", help="recompute a logged run's diagnostics from its MLflow checkpoint",
                        description="Load a run's checkpoint from MLflow, recompute every diagnostic at its epoch, "
                                    "compare with what the run logged, and run the null calibration (deep_cos "
                                    "with freshly drawn feedback matrices) for rules that have them.")
    dg.add_argument("--run-id", required=True, help="MLflow run id")
    add_tracking_uri(dg)
    dg.add_argument("--data-dir", help="where the run's dataset is on this machine (cifar, npz), if moved")
    dg.add_argument("--null-draws", type=int, default=5, help="fresh feedback draws for the null calibration")
    for name, what in (("reproduce", "reproduce the reference study: searches/reproduce.py (its flags: --help)"),
                       ("verify", "the reproduction's report and verdicts from the store: analysis/verify.py")):
        sub.add_parser(name, help=what)
    return p


# recomputed vs logged: the same computation in the run's dtype; only round-off (another device) differs
DIAGNOSE_RTOL = {"float64": 1e-6, "float32": 1e-4}


def print_verdicts(uri: str | None, run_id: str) -> None:
    """The run's evaluation-protocol verdicts (raycredit.verdicts) among its experiment's finished runs."""
    from raycredit import tracking
    from raycredit.tracking.results import results
    from raycredit.verdicts import FLOOR_RATIO, GROWTH, THRESHOLD_PP, run_verdicts

    experiment = tracking.run_experiment_name(uri, run_id)
    table = run_verdicts(results(experiment, uri))
    row = table[table["run_id"] == run_id] if "run_id" in table else table
    if row.empty:
        print(f"\nevaluation protocol: run {run_id} has not finished; its verdicts come with its final epoch")
        return
    r = row.iloc[0]

    def word(v: str) -> str:
        fired = r[v]
        return f"– ({r[f'why_{v}']})" if fired is None or fired != fired else "FIRE" if fired else "PASS"

    print(f"\nevaluation protocol (raycredit.verdicts) at the run's final epoch, among the finished runs of "
          f"experiment {experiment!r}:")
    detail_a = f"; ||h_L|| {r['h_ratio']:.3g} x the setting's BP, fires at {GROWTH:g}" if r["(a)"] is not None else ""
    print(f"  (a) residual-stream growth: {word('(a)')} (mode1a = {r['mode1a']:g}{detail_a})")
    detail_b = f"; ||g_L|| {r['g_ratio']:.3g} x BP's, fires at <= {FLOOR_RATIO:g}" if r["(b)"] is not None else ""
    print(f"  (b) gradient-floor collapse: {word('(b)')} (mode1b = {r['mode1b']:g}{detail_b})")
    taus = ", ".join(f"{m} {r[f'tau_{m}']:+.2f}" for m in ("test_acc", "deep_nudge", "train_loss", "consensus")
                     if r[f"tau_{m}"] == r[f"tau_{m}"])
    print(f"  (c) functional agreement of this setting and seed: {word('(c)')}"
          + (f" (Kendall tau of deep_cos's order of the audited rules against {taus})" if r["(c)"] is not None else ""))
    if r["(d)"] is None:
        print(f"  (d) depth utilization: {word('(d)')}")
    else:
        print(f"  (d) depth utilization: {word('(d)')} (test_acc {r['test_acc']:.4f} - frozen baseline "
              f"{r['baseline_acc']:.4f} = {r['margin_pp']:+.2f} pp; threshold {THRESHOLD_PP:g} pp; the baseline is "
              f"the better of the trained readout {r['frozen_acc']:.4f} and the fitted one {r['frozen_fit_acc']:.4f})")


def cmd_diagnose(args: argparse.Namespace) -> int:
    import statistics
    import tempfile

    from raycredit import tracking
    from raycredit.checkpoint import load_checkpoint
    from raycredit.posthoc import rediagnose

    if args.null_draws < 0:
        raise UserError("--null-draws must be >= 0")
    with tempfile.TemporaryDirectory(prefix="raycredit-diagnose-") as tmp:
        name, path = tracking.run_checkpoint(args.tracking_uri, args.run_id, tmp)
        ckpt = load_checkpoint(path)
    if args.data_dir:
        ckpt["config"]["data"]["data_dir"] = args.data_dir
    epoch = ckpt["epoch"]
    logged = tracking.metrics_at(args.tracking_uri, args.run_id, epoch)
    dtype = "float64" if logged.get("diag_float64", 1.0) == 1.0 else "float32"
    ckpt["config"]["diag"]["diag_dtype"] = dtype  # the dtype the run's own diagnostics ran in
    rtol = DIAGNOSE_RTOL[dtype]
    metrics, null = rediagnose(ckpt, null_draws=args.null_draws)
    print(f"run {args.run_id} ({name}): {ckpt['config']['rule']['rule']}, checkpoint at epoch {epoch}\n")
    print("| metric | logged | recomputed | |difference| |\n|---|---|---|---|")
    mismatched = []
    for key in sorted(metrics):
        got, want = metrics[key], logged.get(key)
        if want is None:
            print(f"| {key} | – | {got:.6g} | |")
            continue
        diff = abs(got - want)
        same = diff <= rtol * max(1.0, abs(want)) or (math.isnan(got) and math.isnan(want))
        mismatched += [] if same else [key]
        print(f"| {key} | {want:.6g} | {got:.6g} | {diff:.2g}{'' if same else ' MISMATCH'} |")
    if null is not None:
        spread = f" ± {statistics.stdev(null):.3f}" if len(null) > 1 else ""
        print(f"\nnull calibration: deep_cos {metrics['deep_cos']:.4f} with the training feedback matrices, "
              f"{statistics.mean(null):.4f}{spread} with {len(null)} fresh draws")
    print_verdicts(args.tracking_uri, args.run_id)
    if mismatched:
        print(f"\n{len(mismatched)} diagnostics differ from the logged values: {', '.join(mismatched)}")
        return 1
    print(f"\nall {sum(k in logged for k in metrics)} logged diagnostics reproduced ({dtype}, rtol {rtol:g})")
    return 0


def _json_safe(x):
    """NaN and inf become null: result.json stays strict JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    return x


def cmd_train(args: argparse.Namespace) -> int:
    from raycredit.checkpoint import checkpoint_due, load_checkpoint, run_checkpoint_path, save_checkpoint
    from raycredit.config import Config, field_docs
    from raycredit.data import load_data
    from raycredit.lineage import kept_epochs
    from raycredit.rules import make_config
    from raycredit.start import resolve_start
    from raycredit.train import resolve_device, train

    knobs = {key: getattr(args, key) for _, key, _ in field_docs() if getattr(args, key) is not None}
    out = Path(args.out)
    ckpt_path = run_checkpoint_path(out)
    saved = None
    if args.resume:
        if not ckpt_path.exists():
            raise UserError(f"--resume: no checkpoint at {ckpt_path}")
        saved = load_checkpoint(ckpt_path)
        # the run's own config; flags given override it (e.g. --epochs to train longer)
        knobs = {**Config.from_dict(saved["config"]).flat(), **knobs}
    elif ckpt_path.exists():
        raise UserError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    cfg = make_config(knobs)
    if cfg.exploit.exploitability:
        raise UserError("exploitability: `raycredit train` trains; snapshot analyses run as search trials "
                        "(searches/exploitability.py)")
    data = load_data(cfg.data, resolve_device(cfg.train.device))
    start = resolve_start(cfg, saved, data, uri=args.tracking_uri)
    if start.kind == "branch":
        print(f"branch of {start.parent_id or cfg.lineage.parent_run} at epoch {cfg.lineage.parent_epoch}")
    kept = set(kept_epochs(cfg)) - {cfg.train.epochs}
    out.mkdir(parents=True, exist_ok=True)

    def on_epoch(epoch, metrics, checkpoint_fn):
        if checkpoint_fn is not None and (checkpoint_due(cfg, epoch) or epoch in kept):
            ckpt = checkpoint_fn()
            if epoch in kept:
                run_checkpoint_path(out, epoch).parent.mkdir(exist_ok=True)
                save_checkpoint(ckpt, run_checkpoint_path(out, epoch))
            if checkpoint_due(cfg, epoch):
                save_checkpoint(ckpt, ckpt_path)

    result = train(cfg, checkpoint=start.checkpoint, on_epoch=on_epoch, progress=not args.no_progress, data=data)
    (out / "result.json").write_text(json.dumps(_json_safe(result), indent=1))
    final = result["final"]
    print(f"test_acc={final['test_acc']:.4f} train_loss={final['train_loss']:.4f}"
          + (" DIVERGED" if final.get("diverged") else "") + f" -> {out / 'result.json'}")
    return 0


def cmd_reproduce(argv: list[str]) -> int:
    from raycredit.reproduce import load_search

    try:
        return load_search("reproduce").main(argv)
    except UserError as e:
        print(f"raycredit: error: {e}", file=sys.stderr)
        return 2


def cmd_verify(argv: list[str]) -> int:
    from analysis import verify

    return verify.main(argv)


# their flags are their scripts' own: everything after the command's name is passed on unparsed
PASSED_ON = {"reproduce": cmd_reproduce, "verify": cmd_verify}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in PASSED_ON:
        return PASSED_ON[argv[0]](argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return {"train": cmd_train, "diagnose": cmd_diagnose}[args.command](args)
    except UserError as e:
        print(f"raycredit: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
