"""Importance scoring: width (one activation pass), depth (loss, BI, accuracy), the artifact."""

from .depth import DEPTH_METRICS, layers_removed
from .scores import ImportanceScores
from .width import WidthCollector, width_importance

__all__ = ["DEPTH_METRICS", "ImportanceScores", "WidthCollector", "layers_removed",
           "width_importance"]
