"""Every setting of a student search in one schema (``schema.py``): the target, where the
predictions are made, the search space, the ranking, and how importance is scored.
``minitron search``'s flags, the recipe's ``prune.search`` section, :func:`search_student`'s
keywords and the ModelOpt mode's ``config["search"]`` are all read off it."""

from __future__ import annotations

from dataclasses import dataclass

from ..bench.hardware import GPU_LIMITS
from ..core.align import Alignment
from ..core.errors import MinitronError
from ..core.schema import at_least, below_one, fields_of, positive, setting
from ..distill.api import DistillConfig
from ..eval.tasks import TASKS
from ..importance.settings import ScoringSettings
from ..pruning.target import parse_alignment
from ..quantize.schemes import SCHEMES, UNQUANTIZED
from .goal import Goal
from .predict import Deployment
from .space import Bounds

TARGETS = ("target_params", "target_active_params", "target_memory_gb", "target_speedup")
#: Precisions a candidate can be deployed in: the 16-bit checkpoint and every scheme.
PRECISIONS = (UNQUANTIZED, *SCHEMES)
_OTHER = "another target"
_RANK_BY = "loss, kd or task:NAME"


def _open_fraction(value: float) -> str | None:
    return None if 0 < value < 1 else "must be in (0, 1)"


def _above_one(value: float) -> str | None:
    return None if value > 1 else "must exceed 1"


def _rank_by(value: str) -> str | None:
    if value in ("loss", "kd"):
        return None
    task = value.removeprefix("task:")
    if value.startswith("task:") and task in TASKS:
        return None
    return f"is not {_RANK_BY} (tasks: {', '.join(TASKS)})"


def _steps(value: object) -> tuple[int, int, int]:
    """``"HIDDEN,FFN,LAYERS"`` text or a list of three positive integers."""
    parts = value.split(",") if isinstance(value, str) else value
    try:
        steps = tuple(int(p) for p in parts)
    except (TypeError, ValueError):
        steps = ()
    if len(steps) != 3 or min(steps) < 1:
        raise MinitronError(f"{value!r} is not HIDDEN,FFN,LAYERS (positive), e.g. 256,512,2")
    return steps


def _schemes(value: object) -> str:
    """``"bf16,fp8"`` text or a list of precision names: a comma list naming each once, in
    the order given."""
    names = value.split(",") if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise MinitronError(f"{value!r} is not a comma list of precisions")
    names = tuple(dict.fromkeys(n.strip() for n in names if n.strip()))
    unknown = [n for n in names if n not in PRECISIONS]
    if unknown or not names:
        raise MinitronError(f"{', '.join(unknown) or 'none given'}: choose from "
                            f"{', '.join(PRECISIONS)}")
    return ",".join(names)


@dataclass
class SearchSettings(ScoringSettings):
    """A search's settings (model, data and device are its inputs): :class:`ScoringSettings`'
    fields, then these. Exactly one target is given."""

    target_params: float | None = setting(
        None, "parameter budget: absolute (4.5e9) or a fraction of the source (0.5)",
        unset=_OTHER, check=positive)
    target_active_params: float | None = setting(
        None, "mixture-of-experts models: budget of the parameters one token uses (top-k of "
        "the routed experts), absolute or a fraction of the source's", unset=_OTHER,
        check=positive)
    target_memory_gb: float | None = setting(
        None, "GiB of weights (as each of schemes stores them) plus the 16-bit KV cache of "
        "at_batch sequences of isl + osl tokens", unset=_OTHER, check=positive)
    target_speedup: float | None = setting(
        None, "predicted speedup over the source at at_batch on gpu (needs at_batch)",
        unset=_OTHER, check=_above_one)
    at_batch: int | None = setting(None, "batch size of the memory and speedup predictions",
                                   unset="1; required with target_speedup", check=at_least(1))
    isl: int = setting(512, "prompt length of the predictions", check=at_least(1))
    osl: int = setting(128, "output length of the predictions", check=at_least(2))
    schemes: str = setting(
        UNQUANTIZED, "precisions each candidate shape is deployed in, e.g. bf16,fp8,w4a16: "
        "every shape-precision pair is predicted (weight bytes by the scheme's storage in its "
        "default format) and meets the target or not; losses are the 16-bit student's",
        convert=_schemes)
    gpu: str = setting("h100", "GPU whose recorded copy bandwidth and bf16 matmul rate the "
                       "speedup prediction uses", choices=tuple(GPU_LIMITS))
    tolerance: float = setting(0.05, "candidates lie within this fraction below the params or "
                               "memory target, or above the speedup target",
                               check=_open_fraction)
    max_width_prune: float = setting(0.4, "most pruning of hidden size, FFN size and heads per "
                                     "KV group", check=below_one)
    max_depth_prune: float = setting(0.2, "most pruning of layers", check=below_one)
    max_expert_prune: float = setting(0.5, "mixture-of-experts models: most pruning of the "
                                      "experts per layer (never below the experts per token)",
                                      check=below_one)
    steps: tuple[int, int, int] | None = setting(
        None, "grid steps HIDDEN,FFN,LAYERS (multiples of align)",
        unset="hidden 256, FFN 512, 2 layers at 8B scale, smaller for smaller models",
        convert=_steps, show=lambda s: ",".join(map(str, s)))
    align: Alignment = setting(
        Alignment(), "multiples HIDDEN,FFN[,HEADS] every candidate size keeps",
        convert=parse_alignment, show=lambda a: f"{a.hidden},{a.ffn},{a.heads}")
    max_candidates: int = setting(32, "candidates evaluated after pruning, closest to the "
                                  "target first", check=at_least(1))
    candidates: int = setting(3, "K: the candidates with the lowest loss after pruning that "
                              "get the short distillation", check=at_least(1))
    rank_by: str = setting("kd", "loss (right after pruning), kd (held-out loss after "
                           "rank_tokens of distillation) or task:NAME (its accuracy then)",
                           check=_rank_by)
    rank_tokens: int = setting(8192, "distillation tokens per ranked candidate",
                               check=at_least(1))
    lr: float = setting(1e-4, "learning rate of the short distillation", check=positive)
    heldout_seqs: int = setting(32, "held-out sequences of seq_len tokens for the loss",
                                check=at_least(1))
    rank_task_limit: int = setting(200, "items of the rank_by task", check=at_least(1))
    scores: str | None = setting(None, "reuse a scores file or a pruned folder's scores "
                                 "instead of calibrating", unset="calibrate once")

    def __post_init__(self) -> None:
        super().__post_init__()
        given = [name for name in TARGETS if getattr(self, name) is not None]
        if len(given) != 1:
            raise MinitronError(f"give exactly one target ({', '.join(TARGETS)}), "
                                f"got {', '.join(given) or 'none'}")
        if self.target_speedup is not None and self.at_batch is None:
            raise MinitronError("target_speedup needs at_batch: the speedup depends on it")
        if self.depth_metric == "accuracy":
            raise MinitronError("depth_metric: search scores depth by loss or bi, not accuracy")

    @property
    def rank_task(self) -> str | None:
        """The task of ``rank_by task:NAME``."""
        return self.rank_by.removeprefix("task:") if self.rank_by.startswith("task:") else None

    def for_scheme(self, scheme: str) -> SearchSettings:
        """These settings searching the student deployed in ``scheme`` alone (a recipe that
        quantizes: its targets are the quantized student's); refuses other schemes given."""
        if self.schemes not in (UNQUANTIZED, scheme):
            raise MinitronError(f"schemes: the recipe quantizes with {scheme}, so the search "
                                f"plans in {scheme}; leave schemes out")
        return SearchSettings.make(self, schemes=scheme)

    @property
    def scheme_list(self) -> tuple[str, ...]:
        """``schemes`` as names."""
        return tuple(self.schemes.split(","))

    def scoring(self) -> ScoringSettings:
        """The scoring part alone (what ``minitron prune`` takes with the chosen shape)."""
        return ScoringSettings(**{f.name: getattr(self, f.name)
                                  for f in fields_of(ScoringSettings)})

    def goal(self) -> Goal:
        if self.target_params is not None:
            return Goal("params", self.target_params, self.tolerance)
        if self.target_active_params is not None:
            return Goal("active_params", self.target_active_params, self.tolerance)
        if self.target_memory_gb is not None:
            return Goal("memory", self.target_memory_gb, self.tolerance)
        return Goal("speedup", self.target_speedup, self.tolerance)

    def deployment(self) -> Deployment:
        return Deployment(self.gpu, self.at_batch or 1, self.isl, self.osl)

    def bounds(self) -> Bounds:
        return Bounds(self.max_width_prune, self.max_depth_prune, *(self.steps or (None,) * 3),
                      max_experts=self.max_expert_prune)

    def kd_config(self, device: str, precision: str) -> DistillConfig:
        """The short distillation of every ranked candidate."""
        return DistillConfig(tokens=self.rank_tokens, seq_len=self.seq_len,
                             batch_size=self.batch_size, lr=self.lr, seed=self.seed,
                             device=device, precision=precision, text_column=self.text_column,
                             split=self.split)
