"""minitron-deploy: Minitron structured pruning (depth and width) for Hugging Face LLMs."""

__version__ = "0.1.0"

import os  # noqa: E402

# OpenMP threads that spin while waiting made CPU forwards ~3x slower on a shared 2-core machine
# (benchmarks/demo/README.md). Read when torch loads its OpenMP runtime, so it applies only if
# torch is not imported yet; a value set by the user wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .align import Alignment  # noqa: E402
from .errors import MinitronError  # noqa: E402
from .export import export as export_model  # noqa: E402
from .prune import PruneReport, prune, prune_model  # noqa: E402
from .prune_settings import PruneSettings  # noqa: E402
from .scoring import ScoringSettings, score_activations, score_model  # noqa: E402
from .target import TargetSpec, resolve_target  # noqa: E402
from .trim import KeepPlan, trim_model  # noqa: E402

__all__ = ["Alignment", "KeepPlan", "MinitronError", "PruneReport", "PruneSettings",
           "ScoringSettings", "TargetSpec",
           "__version__", "export_model", "prune", "prune_model", "resolve_target",
           "score_activations", "score_model", "trim_model"]
