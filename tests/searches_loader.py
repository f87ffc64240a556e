"""Import a search script as a module (searches/ is a folder of scripts, not a package)."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_search(name: str):
    spec = importlib.util.spec_from_file_location(f"search_{name}", ROOT / "searches" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
