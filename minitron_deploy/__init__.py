"""minitron-deploy: Minitron structured pruning (depth and width) for Hugging Face LLMs,
distillation, export, serving and benchmarks.

The public API is importable from here; each name is loaded on first use, so
``import minitron_deploy`` stays cheap (no torch, no ModelOpt, no vLLM).
"""

import importlib
import os

from ._version import __version__

# OpenMP threads that spin while waiting made CPU forwards ~3x slower on a shared 2-core machine
# (benchmarks/demo/README.md). Read when torch loads its OpenMP runtime, so it applies only if
# torch is not imported yet; a value set by the user wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

#: public name -> (module, attribute)
_PUBLIC = {
    "Alignment": ("core.align", "Alignment"),
    "MinitronError": ("core.errors", "MinitronError"),
    "PruneReport": ("pruning.api", "PruneReport"),
    "prune": ("pruning.api", "prune"),
    "prune_model": ("pruning.api", "prune_model"),
    "PruneSettings": ("pruning.settings", "PruneSettings"),
    "ScoringSettings": ("pruning.scoring", "ScoringSettings"),
    "score_activations": ("pruning.scoring", "score_activations"),
    "score_model": ("pruning.scoring", "score_model"),
    "TargetSpec": ("pruning.target", "TargetSpec"),
    "resolve_target": ("pruning.target", "resolve_target"),
    "KeepPlan": ("pruning.trim", "KeepPlan"),
    "trim_model": ("pruning.trim", "trim_model"),
    "DistillConfig": ("distill.config", "DistillConfig"),
    "search_student": ("search.api", "search_student"),
    "evaluate": ("eval.api", "evaluate"),
    "export_model": ("export.api", "export"),
    "load_recipe": ("pipeline.recipe", "load_recipe"),
    "run_pipeline": ("pipeline.run", "run_pipeline"),
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attribute = _PUBLIC[name]
    value = getattr(importlib.import_module(f".{module}", __name__), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
