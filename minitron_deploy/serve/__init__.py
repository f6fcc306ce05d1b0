"""Deployment through vLLM, which lives in its own environment (it pins other library versions):
this package finds that environment's python and drives it in subprocesses."""
