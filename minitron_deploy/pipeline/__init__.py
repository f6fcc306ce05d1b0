"""The one-command pipeline: recipes, resumable stages, the memory plan, the demo and the
final report (``run.run_pipeline``)."""
