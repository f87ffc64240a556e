"""Are single runs bit-identical to another commit's? A check for refactors of the training loop.

Trains a 2-epoch run of every rule (a small synthetic config), and a population of two seeds of it, with this
checkout and with the code of `--ref` (a git commit, checked out into a temporary worktree), each in its own
process, and compares the final metrics (time_s aside) and every tensor of the final checkpoints exactly.

    python benchmarks/bit_identity.py --ref HEAD~1

Prints one line per rule and population and exits 1 when any differs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = dict(dataset="synthetic", n_train=384, n_test=128, input_dim=8, d=16, L=2, epochs=2, batch_size=64,
              probe_size=32, rho_dirs=4, device="cpu")
RULES = ("bp", "fa", "dfa", "frozen", "ep", "state_bridge", "vector_field", "credit_bridge", "scaffold",
         "sign_symmetry", "kolen_pollack")

# Run inside the code under test: trains each rule, saves its final checkpoint and metrics under argv[1].
CHILD = """
import json, sys, torch
try:
    from raycredit.rules import make_config
except ImportError:  # code from before make_config, whose Config.from_dict applied the rules' defaults
    from raycredit.config import Config
    make_config = Config.from_dict
from raycredit.population import train_members
out, cfg, rules = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3].split(",")
for rule in rules:
    for seeds, name in (((0,), rule), ((0, 1), rule + "-population")):
        kept = []
        histories = train_members([make_config({**cfg, "rule": rule, "seed": s}) for s in seeds],
                                  on_epoch=lambda e, m, fn: kept.append(fn and fn()))
        torch.save({"final": {f"{i}/{k}": v for i, h in enumerate(histories) for k, v in h[-1].items()
                              if k != "time_s"},
                    "model": {f"{i}/{k}": v for i, c in enumerate(kept[-1]) for k, v in c["model"].items()},
                    "rule": {f"{i}/{k}": v for i, c in enumerate(kept[-1]) for k, v in c["rule"].items()}},
                   f"{out}/{name}.pt")
"""


def run(code_root: Path, out: Path, rules: list[str]) -> None:
    subprocess.run([sys.executable, "-c", CHILD, str(out), json.dumps(CONFIG), ",".join(rules)],
                   cwd=code_root, env={"PYTHONPATH": str(code_root), "PATH": "/usr/bin:/bin"}, check=True)


def differences(a: dict, b: dict) -> list[str]:
    import math

    diff = [f"final[{k}]" for k in a["final"] if not (a["final"][k] == b["final"].get(k) or (
        math.isnan(a["final"][k]) and math.isnan(b["final"].get(k, 0.0))))]
    for part in ("model", "rule"):
        diff += [f"{part}[{k}]" for k in a[part] if k not in b[part] or not same(a[part][k], b[part][k])]
    return diff


def same(a, b) -> bool:
    """Exactly equal tensors (dtype and shape too), or containers of them."""
    import torch

    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def main(argv: list[str] | None = None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ref", required=True, help="the commit to compare against")
    p.add_argument("--rules", default=",".join(RULES))
    args = p.parse_args(argv)
    rules = args.rules.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ref = tmp / "ref"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(ref), args.ref], check=True)
        try:
            for name, root in (("ref", ref), ("here", ROOT)):
                (tmp / f"out-{name}").mkdir()
                run(root, tmp / f"out-{name}", rules)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(ref)], check=True)
        bad = 0
        for name in (n for rule in rules for n in (rule, f"{rule}-population")):
            a, b = (torch.load(tmp / f"out-{n}" / f"{name}.pt", weights_only=True) for n in ("here", "ref"))
            diff = differences(a, b)
            bad += bool(diff)
            print(f"{name:25s} {'identical' if not diff else 'DIFFERS: ' + ', '.join(diff[:6])}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
