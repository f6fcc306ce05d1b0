"""Choosing the student by search: candidate shapes under a parameter, memory or speedup
target, pruned from one importance artifact and ranked by held-out loss and short
distillation."""

from .api import SearchResult, SearchSettings, plan_search, search_student
from .goal import Goal
from .predict import Deployment
from .space import Bounds

__all__ = ["Bounds", "Deployment", "Goal", "SearchResult", "SearchSettings", "plan_search",
           "search_student"]
