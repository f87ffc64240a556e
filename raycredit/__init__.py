"""raycredit: Ray Tune sweeps for research on local credit assignment."""

from raycredit import rules  # noqa: F401  (registers the rules' config checks with raycredit.config)
from raycredit.config import Config
from raycredit.errors import UserError

__version__ = "0.1.0"
__all__ = ["Config", "UserError", "__version__", "results"]


def results(experiment: str, tracking_uri: str | None = None):
    """A pandas DataFrame of an experiment's finished trials, one row each: the config's params (typed), the last
    value of every metric, the MLflow run id and the run key (`raycredit.tracking.results`)."""
    from raycredit.tracking.results import results as table

    return table(experiment, tracking_uri)
