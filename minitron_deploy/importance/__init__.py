"""Importance scoring: width (one activation pass, then the chosen criterion), depth (loss,
BI, accuracy), the artifact."""

from .criteria import CRITERIA
from .depth import DEPTH_METRICS, layers_removed
from .scores import ImportanceScores
from .width import WidthCollector, width_importance

__all__ = ["CRITERIA", "DEPTH_METRICS", "ImportanceScores", "WidthCollector", "layers_removed",
           "width_importance"]
