"""Minitron pruning: score importance on calibration data, resolve the target shape, select
the units to keep and trim the weights (``api.prune`` is the stage)."""
