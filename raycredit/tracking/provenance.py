"""Where a sweep's runs come from, as MLflow records it: the code's version and MLflow's standard source tags."""

from __future__ import annotations

import getpass
import subprocess
from pathlib import Path

from raycredit import __version__
from raycredit.tracking.store import redact


def code_version() -> str:
    """Package version plus the git commit of the checkout (with -dirty for uncommitted changes)."""
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__


def source_tags(name: str) -> dict[str, str]:
    """MLflow's standard source tags for this driver's runs (the UI's Source column): the search script, the user,
    and the checkout's git commit, branch and remote where there are any (credentials in the remote's URL
    masked)."""
    from mlflow.entities import SourceType
    from mlflow.utils import mlflow_tags as t

    root = Path(__file__).resolve().parents[2]
    script = root / "searches" / f"{name}.py"
    tags = {t.MLFLOW_SOURCE_NAME: f"searches/{name}.py" if script.exists() else name,
            t.MLFLOW_SOURCE_TYPE: SourceType.to_string(SourceType.LOCAL), t.MLFLOW_USER: getpass.getuser()}
    for tag, argv in ((t.MLFLOW_GIT_COMMIT, ["rev-parse", "HEAD"]), (t.MLFLOW_GIT_BRANCH, ["branch", "--show-current"]),
                      (t.MLFLOW_GIT_REPO_URL, ["config", "--get", "remote.origin.url"])):
        try:
            value = subprocess.run(["git", "-C", str(root), *argv], capture_output=True, text=True,
                                   timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            value = ""
        if value:
            tags[tag] = redact(value)  # a remote such as https://user:token@host/repo.git keeps its token here
    return tags
