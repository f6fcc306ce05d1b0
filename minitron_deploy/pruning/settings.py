"""Every setting of a prune in one schema: the target, how importance is scored, how the trim
treats the norms, and scores to reuse. ``minitron prune``'s flags, the recipe's ``prune:``
section, :func:`~minitron_deploy.pruning.api.prune`'s keywords and the ModelOpt mode's config are
all read off it (see ``schema.py``)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..core.errors import MinitronError
from ..core.schema import setting
from ..importance.settings import ScoringSettings
from .target import TargetSpec
from .trim import RESCALE_CHOICES


def _path(value: object) -> str:
    if not isinstance(value, (str, os.PathLike)):
        raise MinitronError(f"{value!r} is not a path")
    return os.fspath(value)


@dataclass
class PruneSettings(ScoringSettings, TargetSpec):
    """A prune's settings (the model, calibration data and device are its inputs, not
    settings): :class:`TargetSpec`'s fields, then :class:`ScoringSettings`', then these."""

    rescale_norms: str = setting(
        "auto", "scale RMSNorm weights by sqrt(H_old/H_new) after hidden pruning (auto: on for "
        "RMSNorm families, off for LayerNorm)", choices=tuple(RESCALE_CHOICES))
    scores: str | None = setting(
        None, "reuse scores instead of calibrating: a scores file or a folder pruned before "
        "(its minitron/importance.safetensors); they must match the criterion and its settings "
        "and have been computed on these very weights", unset="calibrate", convert=_path)

    def rescale(self) -> bool | None:
        """``rescale_norms`` as trimming takes it (None: the family's default)."""
        return RESCALE_CHOICES[self.rescale_norms]
