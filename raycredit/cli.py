"""`raycredit train`: one run without Ray (SPEC §10). Every config knob is a flag; see --help."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from raycredit.config import field_docs
from raycredit.errors import UserError
from raycredit.search import OneLineParser

TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="raycredit", description="raycredit: sweeps for local credit assignment research")
    sub = p.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    t = sub.add_parser("train", help="train one configuration without Ray and write DIR/result.json",
                       description="Train one configuration; writes DIR/result.json and DIR/checkpoint.pt.")
    t.add_argument("--out", required=True, help="output folder for result.json and checkpoint.pt")
    t.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.pt")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    for section, key, f in field_docs():
        flag = "--" + key.replace("_", "-")
        kind = TYPES[f.type] if isinstance(f.type, str) else f.type
        helptext = f"[{section}] {f.metadata['doc']} (default {f.default!r})"
        if kind is bool:
            t.add_argument(flag, dest=key, action=argparse.BooleanOptionalAction, default=None, help=helptext)
        else:
            t.add_argument(flag, dest=key, type=kind, default=None, metavar=kind.__name__.upper(),
                           choices=f.metadata["choices"], help=helptext)
    return p


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
    from raycredit.config import Config
    from raycredit.data import load_data
    from raycredit.train import load_checkpoint, resolve_device, save_checkpoint, train

    knobs = {key: getattr(args, key) for _, key, _ in field_docs() if getattr(args, key) is not None}
    cfg = Config.from_dict(knobs)
    out = Path(args.out)
    ckpt_path = out / "checkpoint.pt"
    ckpt = None
    if args.resume:
        if not ckpt_path.exists():
            raise UserError(f"--resume: no checkpoint at {ckpt_path}")
        ckpt = load_checkpoint(ckpt_path)
    elif ckpt_path.exists():
        raise UserError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    data = load_data(cfg.data, resolve_device(cfg.train.device))
    out.mkdir(parents=True, exist_ok=True)

    def on_epoch(epoch, metrics, checkpoint_fn):
        if checkpoint_fn is not None and (epoch % cfg.train.checkpoint_every == 0 or epoch == cfg.train.epochs):
            save_checkpoint(checkpoint_fn(), ckpt_path)

    result = train(cfg, checkpoint=ckpt, on_epoch=on_epoch, progress=not args.no_progress, data=data)
    (out / "result.json").write_text(json.dumps(_json_safe(result), indent=1))
    final = result["final"]
    print(f"test_acc={final['test_acc']:.4f} train_loss={final['train_loss']:.4f}"
          + (" DIVERGED" if final.get("diverged") else "") + f" -> {out / 'result.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"train": cmd_train}[args.command](args)
    except UserError as e:
        print(f"raycredit: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
