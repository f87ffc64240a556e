"""The command-line flags of `raycredit` (cli.py) and of the search scripts (search.py), declared once.

Config knobs become flags (`add_knob_flags`) from their declarations in `raycredit.config`, never re-typed.
"""

from __future__ import annotations

import argparse

from raycredit.config import KEY_SECTION, check_key, field_docs
from raycredit.errors import UserError

TYPES = {"int": int, "float": float, "str": str, "bool": bool}


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports bad flags as one line (and exit 2), without the usage block. `knob_hint`: the
    parser sets knobs with --set, so an unknown flag that names a knob gets the --set spelling of it."""

    knob_hint = False

    def error(self, message: str):
        prefix = "unrecognized arguments: "
        if self.knob_hint and message.startswith(prefix):
            words = message[len(prefix):].split()
            for i, word in enumerate(words):
                key, _, value = word[2:].partition("=")
                key = key.replace("-", "_")
                if word.startswith("--") and key in KEY_SECTION:
                    value = value or (words[i + 1] if i + 1 < len(words) and not words[i + 1].startswith("-")
                                      else "VALUE")
                    message += (f" (a search sets a config knob with --set: --set {key}={value}; an axis of its own "
                                "is a preset in the search's file)")
                    break
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_value(text: str):
    """A --set value: int, float, bool or string."""
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def add_tracking_uri(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///$PWD/mlflow_runs/mlflow.db)")


def add_knob_flags(p: argparse.ArgumentParser, listed: dict[str, list[str]] | None = None) -> None:
    """One flag per config knob (--lr, --credit-norm/--no-credit-norm, ...), default None (the knob's own).
    `listed`: the valid values of knobs whose choices a registry holds (the rules), for their help."""
    for section, key, f in field_docs():
        flag = "--" + key.replace("_", "-")
        kind = TYPES[f.type] if isinstance(f.type, str) else f.type
        values = (listed or {}).get(key)
        listing = ": " + ", ".join(values) if values else ""
        helptext = f"[{section}] {f.metadata['doc']}{listing} (default {f.default!r})"
        if kind is bool:
            p.add_argument(flag, dest=key, action=argparse.BooleanOptionalAction, default=None, help=helptext)
        else:
            p.add_argument(flag, dest=key, type=kind, default=None, metavar=kind.__name__.upper(),
                           choices=f.metadata["choices"], help=helptext)


def knob_choices(key: str) -> tuple:
    """A knob's declared choices."""
    return next(f.metadata["choices"] for _, k, f in field_docs() if k == key)


def search_parser(name: str, doc: str, presets: dict, default_preset: str,
                 optuna: bool = False) -> argparse.ArgumentParser:
    """The flags every search script takes; presets: {name: Preset}."""
    p = OneLineParser(prog=f"{name}.py", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.knob_hint = True
    p.add_argument("--preset", choices=list(presets), default=default_preset,
                   help=f"parameter space (default {default_preset}): "
                        + "; ".join(f"{k}: {v.doc}" for k, v in presets.items()))
    p.add_argument("--address", help="Ray cluster: host:port or 'auto' (default: a new local instance)")
    p.add_argument("--dataset", help="override the preset's dataset (" + ", ".join(knob_choices("dataset")) + ")")
    p.add_argument("--data-dir", help="dataset folder (cifar) or .npz file")
    p.add_argument("--download", action="store_true", help="cifar: download into --data-dir when missing")
    p.add_argument("--seeds", help="comma-separated training seeds, e.g. 0,1,2 (overrides the preset)")
    p.add_argument("--epochs", type=int, help="override the preset's epochs")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key for every trial (repeatable)")
    p.add_argument("--gpus-per-trial", type=float, default=0.25, help="fractional GPUs per trial (default 0.25)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial (default 1)")
    p.add_argument("--max-failures", type=int, default=2, help="retries of a failed trial from its checkpoint")
    p.add_argument("--trial-timeout", type=float, default=0.0, metavar="S",
                   help="a trial that reports nothing for S seconds is killed as hung and retried (default 0: off)")
    p.add_argument("--hang-after", type=float, default=60.0, metavar="S",
                   help="a trial whose process has stopped (no heartbeat from it) for S seconds is killed as hung "
                        "and retried; a slow epoch or a wait on the tracking server is not a hang (default 60; "
                        "0: off)")
    p.add_argument("--system-metrics", type=float, default=2.0, metavar="S",
                   help="every S seconds and at its end, sample each trial's machine (CPU, memory, disk, network, "
                        "NVIDIA GPUs) into its MLflow run's system/* metrics (default 2; 0: off)")
    add_tracking_uri(p)
    p.add_argument("--experiment", help=f"MLflow experiment (default {name}-<preset>)")
    p.add_argument("--storage", default="ray_results",
                   help="where Ray Tune and the trials keep the sweep's state and checkpoints: a folder (on a "
                        "multi-node cluster, one every node mounts) or object storage every node reaches, e.g. "
                        "s3://bucket/prefix, with the client's own credentials (AWS_ACCESS_KEY_ID, "
                        "AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL or ~/.aws) (default ray_results)")
    p.add_argument("--no-analysis", action="store_true", help="skip the analysis after the sweep")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="Ray Tune's trial tables and Ray's and MLflow's INFO logs (default: a progress line every "
                        "10 s)")
    p.add_argument("--out", help="analysis output folder (default reports/<experiment>)")
    if optuna:
        p.add_argument("--num-samples", type=int, help="trials Optuna draws (default: the preset's)")
        p.add_argument("--export-study", action="store_true",
                       help="run nothing: write the search's trials so far as an Optuna study (study.db, "
                            "trials.csv, importances, plots) under <out>/optuna, as the search does when it ends")
    else:
        p.add_argument("--population", type=int, default=1, metavar="P",
                       help="train up to P configs that differ only in seed, lr, penalty_lam, feedback_scale, "
                            "alpha or parent_run in one trial with batched weights (any rule, without compile; "
                            "each config keeps its own MLflow run); default 1")
    return p


def overrides_from(args: argparse.Namespace) -> dict:
    ov: dict = {}
    for key, attr in (("dataset", "dataset"), ("data_dir", "data_dir"), ("epochs", "epochs")):
        if getattr(args, attr) is not None:
            ov[key] = getattr(args, attr)
    if args.download:
        ov["download"] = True
    if args.seeds is not None:
        try:
            ov["seed"] = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            raise UserError(f"--seeds {args.seeds!r}: expected comma-separated integers") from None
        if not ov["seed"]:
            raise UserError("--seeds: no seeds given")
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--set {item!r}: expected KEY=VALUE")
        check_key(key)
        ov[key] = [parse_value(value)] if key == "seed" else parse_value(value)
    return ov


