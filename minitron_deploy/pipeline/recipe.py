"""Recipes: one YAML file describing teacher, data and every stage's settings.

    name: demo
    teacher: builtin:smollm2-135m        # or a checkpoint folder or Hub id (org/name[@rev])
    data: builtin:stdlib-docs            # calibration and distillation text
    heldout: builtin:stdlib-docs-heldout # perplexity text, kept apart from the above
    prune: {target_params: 0.5, calib_samples: 128, seq_len: 256}
    distill: {tokens: 80000, seq_len: 256, lr: 1.0e-3}
    eval: {tasks: [ppl, arc_easy], limit: 100}
    quantize: {scheme: int8-w8a8}        # optional: the distilled student, quantized
                                         # (qad: true: distilled through its fake quantizers)

Unknown keys and wrong types are refused with the key's full path; sections map onto the
Python API's own settings: ``prune`` is :class:`~minitron_deploy.pruning.settings.PruneSettings`
(every ``minitron prune`` setting, checked by its schema), ``distill`` is ``DistillConfig``.
``prune.search`` chooses the shape by a student search instead (``minitron search``'s own
settings, the target among them, e.g. ``search: {target_params: 0.5, candidates: 3}``); in a
recipe that quantizes, the last round's search plans the student in that scheme, so a memory or
speedup target is the quantized student's.
``quantize`` is :class:`~minitron_deploy.quantize.settings.QuantizeSettings` (every ``minitron
quantize`` setting; schemes that calibrate read ``data``), and ``qad`` (:class:`QuantizeStage`).
"""

from __future__ import annotations

import re
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path

import yaml

from ..core.errors import MinitronError
from ..core.precision import resolve_device
from ..core.schema import Schema, fields_of, setting
from ..distill.api import DistillConfig
from ..eval.api import parse_tasks
from ..export.api import DEFAULT_DTYPES
from ..importance.settings import ScoringSettings
from ..pruning.settings import PruneSettings
from ..quantize.schemes import COMPRESSED, QAD_SCHEMES
from ..quantize.settings import QuantizeSettings
from ..search.settings import SearchSettings

#: Settings of the search section besides the scoring ones (those are the prune section's).
_SEARCH_OWN = tuple(f.name for f in fields_of(SearchSettings)
                    if f.name not in {g.name for g in fields_of(ScoringSettings)})


def _search_section(value: object) -> dict:
    """The ``search`` mapping (or the search of a copied section) as its own settings."""
    if isinstance(value, SearchSettings):
        return {name: getattr(value, name) for name in _SEARCH_OWN}
    if not isinstance(value, dict):
        raise MinitronError(f"{value!r} is not a mapping")
    misplaced = sorted(set(value) - set(_SEARCH_OWN))
    if misplaced:
        raise MinitronError(f"{', '.join(map(str, misplaced))}: not search settings (scoring "
                            "settings go in the prune section itself)")
    return value


@dataclass
class PruneStage(PruneSettings):
    """The ``prune`` section: :class:`PruneSettings`, or with ``search`` the shape chosen by
    a student search scored with this section's settings (its align and scores apply unless
    the search gives its own)."""

    search: SearchSettings | None = setting(
        None, "choose the shape by search: minitron search's settings, the target among them",
        unset="no search", convert=_search_section)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.search is None:
            return
        if not self.is_empty():
            raise MinitronError("search: give the target inside search, not beside it")
        base = {f.name: getattr(self, f.name) for f in fields_of(ScoringSettings)}
        self.search = SearchSettings(**base, **{"align": self.align, "scores": self.scores,
                                                **self.search})

    def prune_settings(self) -> PruneSettings:
        """The section without its search (what ``prune`` takes)."""
        return PruneSettings(**{f.name: getattr(self, f.name) for f in fields_of(PruneSettings)})


@dataclass
class QuantizeStage(QuantizeSettings):
    """The ``quantize`` section: :class:`QuantizeSettings`, and ``qad`` (recipes only)."""

    qad: bool = setting(False, "quantization-aware distillation: the last distill stage trains "
                               "through the scheme's fake quantizers and writes the quantized "
                               "student itself (no quantize stage after it)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.qad and (self.scheme not in QAD_SCHEMES or self.resolved_format() != COMPRESSED):
            raise MinitronError(f"qad: trains through {', '.join(QAD_SCHEMES)} written as "
                                f"{COMPRESSED}, not {self.scheme} as {self.resolved_format()}")

    def quantize_settings(self) -> QuantizeSettings:
        """The section without ``qad`` (what ``quantize`` takes)."""
        return QuantizeSettings(**{f.name: getattr(self, f.name)
                                   for f in fields_of(QuantizeSettings)})


@dataclass
class EvalStage:
    """``minitron eval`` settings."""

    tasks: list[str] = field(default_factory=lambda: ["ppl", "hellaswag", "piqa", "arc_easy",
                                                      "arc_challenge", "winogrande"])
    limit: int | None = None
    seq_len: int = 512
    ppl_seqs: int = 64
    batch_size: int = 16
    #: Tasks of the pruned model before distillation (None: the same as ``tasks``).
    pruned_tasks: list[str] | None = None
    #: Tasks of the quantized student (None: the same as ``tasks``).
    quantized_tasks: list[str] | None = None

    def __post_init__(self) -> None:
        for tasks in (self.tasks, self.pruned_tasks, self.quantized_tasks):
            if tasks is not None:
                parse_tasks(",".join(tasks))

    def tasks_for(self, model: str) -> list[str]:
        """Tasks of ``model`` ("teacher", "pruned", "distilled" or "quantized")."""
        own = {"pruned": self.pruned_tasks, "quantized": self.quantized_tasks}.get(model)
        return self.tasks if own is None else own


@dataclass
class Iteration:
    """One prune + distill round of an iterative recipe (its student teaches the next)."""

    prune: PruneStage = field(default_factory=PruneStage)
    distill: DistillConfig = field(default_factory=lambda: DistillConfig(tokens=10_000_000))


@dataclass
class ExportStage:
    """One ``minitron export`` of the final student."""

    format: str = "hf"
    dtype: str | None = None  # None: the format's default (bf16; fp32 for onnx)
    tp: int = 1

    def __post_init__(self) -> None:
        if self.dtype is None:
            self.dtype = DEFAULT_DTYPES.get(self.format)


@dataclass
class BenchStage:
    """``minitron bench`` of teacher against the final student."""

    backend: str = "torch"
    isl: int = 512
    osl: int = 128
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 32])
    reps: int = 3


#: A recipe's name names its default work dir (``out/<name>``): one path component, no ``..``.
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass
class Recipe:
    name: str
    teacher: str
    data: str
    heldout: str
    device: str = "auto"  # resolved on reading: CUDA when a GPU is visible, else the CPU
    prune: PruneStage = field(default_factory=PruneStage)
    distill: DistillConfig = field(default_factory=lambda: DistillConfig(tokens=10_000_000))
    iterations: list[Iteration] | None = None  # replaces prune/distill when given
    eval: EvalStage = field(default_factory=EvalStage)
    export: list[ExportStage] = field(default_factory=list)
    bench: BenchStage | None = None
    quantize: QuantizeStage | None = None  # the final student quantized, and evaluated

    def __post_init__(self) -> None:
        if not _SAFE_NAME.fullmatch(self.name):
            raise MinitronError(f"name: {self.name!r} is not a safe recipe name (letters, digits, "
                                "'.', '_' and '-', starting with a letter or digit; it names "
                                "the work dir out/<name>)")
        self.device = resolve_device(self.device)
        last = self.rounds()[-1].prune
        if self.quantize is not None and last.search is not None:  # targets: the deployed size
            last.search = last.search.for_scheme(self.quantize.scheme)

    def rounds(self) -> list[Iteration]:
        """The prune + distill rounds in order (one unless ``iterations`` is set)."""
        return self.iterations or [Iteration(self.prune, self.distill)]


def _check_type(value, hint, where: str):
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        others = [option for option in options if option is not type(None)]
        if len(others) == 1:  # an optional value: its own error, not the union's
            return _check_type(value, others[0], where)
        for option in options:
            if option is not type(None):
                try:
                    return _check_type(value, option, where)
                except MinitronError:
                    continue
        raise MinitronError(f"{where}: expected {hint}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise MinitronError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if is_dataclass(hint):
        return build(hint, value, where)
    if hint in (int, float) and isinstance(value, str):
        try:  # PyYAML reads 8.0e4 (no exponent sign) as a string
            value = float(value)
        except ValueError:
            raise MinitronError(f"{where}: expected {hint.__name__}, got {value!r}") from None
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, hint) or (hint is not bool and isinstance(value, bool)):
        raise MinitronError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def build(cls, data, where: str):
    """Instantiate dataclass ``cls`` from a mapping, refusing unknown keys and wrong types."""
    if issubclass(cls, Schema):
        return cls.from_mapping(data, where)
    if not isinstance(data, dict):
        raise MinitronError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise MinitronError(f"{where}: unknown key(s) {', '.join(unknown)} "
                            f"(known: {', '.join(known)})")
    missing = [n for n, f in known.items() if n not in data and f.default is MISSING
               and f.default_factory is MISSING]
    if missing:
        raise MinitronError(f"{where}: missing required key(s) {', '.join(missing)}")
    return cls(**{k: _check_type(v, hints[k], f"{where}.{k}") for k, v in data.items()})


def load_recipe(path: str | Path, overrides: dict | None = None) -> Recipe:
    """Read and validate a recipe (a file, or a shipped recipe's name: :func:`find_recipe`);
    ``overrides`` (nested dict) replace its values."""
    path = find_recipe(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise MinitronError(f"recipe {path} is not valid YAML: {str(exc).splitlines()[0]}")
    for key, value in (overrides or {}).items():
        section, _, leaf = key.partition(".")
        if leaf:
            data.setdefault(section, {})[leaf] = value
        else:
            data[key] = value
    return build(Recipe, data, path.name)


def packaged_recipes() -> dict[str, Path]:
    """The recipes shipped with the package (``recipes/`` in the source tree) by name."""
    from importlib.resources import files

    return {p.stem: p for p in sorted(Path(str(files("minitron_recipes"))).glob("*.yaml"))}


def packaged_recipe(name: str) -> Path:
    """Path of the shipped recipe ``name``."""
    shipped = packaged_recipes()
    if name not in shipped:
        raise MinitronError(f"no packaged recipe {name!r} (shipped: {', '.join(shipped)})")
    return shipped[name]


def find_recipe(spec: str | Path) -> Path:
    """``spec`` when it is a file, else the shipped recipe it names: ``demo``, ``demo.yaml``
    or ``recipes/demo.yaml`` (its path in the source tree, so that works outside it too)."""
    path = Path(spec)
    if path.is_file():
        return path
    shipped = packaged_recipes()
    name = path.name.removesuffix(".yaml")
    if path.parent in (Path(), Path("recipes")) and name in shipped:
        return shipped[name]
    raise MinitronError(f"recipe {spec} does not exist (not a file, nor a shipped recipe: "
                        f"{', '.join(shipped)})")
