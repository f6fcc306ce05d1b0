"""Choosing the student by search: candidate shapes under a parameter, memory or speedup
target, pruned from one importance artifact and ranked by held-out loss and short
distillation."""

from .api import SearchResult, plan_search, search_student
from .settings import SearchSettings

__all__ = ["SearchResult", "SearchSettings", "plan_search", "search_student"]
