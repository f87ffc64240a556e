"""raycredit: Ray Tune sweeps for research on local credit assignment."""

from raycredit.config import Config
from raycredit.errors import UserError

__version__ = "0.1.0"
__all__ = ["Config", "UserError", "__version__", "make_config", "results"]


def results(experiment: str, tracking_uri: str | None = None):
    """A pandas DataFrame of an experiment's finished trials, one row each: the config's params (typed), the last
    value of every metric, the MLflow run id and the run key (`raycredit.tracking.results`)."""
    from raycredit.tracking.results import results as table

    return table(experiment, tracking_uri)


def make_config(d: dict) -> Config:
    """The Config of a flat or nested dict with its rule's own defaults, checked against the rule
    (`raycredit.rules.make_config`; importing it loads torch and the rules)."""
    from raycredit.rules import make_config as build

    return build(d)
