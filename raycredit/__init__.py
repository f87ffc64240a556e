"""raycredit: Ray Tune sweeps for research on local credit assignment."""

from raycredit import rules  # noqa: F401  (registers the rules' config checks with raycredit.config)
from raycredit.config import Config
from raycredit.errors import UserError

__version__ = "0.1.0"
__all__ = ["Config", "UserError", "__version__"]
