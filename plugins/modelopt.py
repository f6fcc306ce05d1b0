"""ModelOpt compression mode ``hf_minitron``: Minitron pruning of Hugging Face decoders.

Importing this module registers the mode with ModelOpt's prune (and NAS) registry::

    import minitron_plugins.modelopt  # noqa: F401
    import modelopt.torch.prune as mtp
    model, _ = mtp.prune(model, mode="hf_minitron",
                         constraints={"export_config": {"hidden_size": 3072, "ffn_hidden_size": 9216}},
                         dummy_input=batch, config={"forward_loop": loop})

It runs the same code as ``minitron prune`` (:func:`minitron_deploy.prune_model`) with the same
settings: the config takes every :class:`~minitron_deploy.pruning.settings.PruneSettings` field
the mode can use (``criterion``, ``seq_agg``, ``depth_metric``, ``rescale_norms``, ``align``,
``scores``, ...; :func:`modelopt_settings` lists them with their defaults), checked by the same
schema with the same one-line errors; the target comes from the constraints (``export_config``
sizes, a ``params`` budget or an ``active_params`` one: the parameters a token uses, which for
mixture-of-experts models count top-k of the routed experts, see
:class:`~minitron_deploy.core.shape.ParamCounts`; dense: the same as ``params``). Scores come
from the forward loop or from a saved artifact (``config={"scores": path}``), refused like
``minitron prune`` refuses them when computed on other weights or with another criterion. The
kept indices and the norm rescaling applied are recorded in the ModelOpt state, so
``mto.save``/``mto.restore`` and HF checkpointing round-trip the model.

With ``config={"search": {...}}`` and a ``params``, ``active_params`` (dense models only, where
it equals ``params``) or ``memory_mb`` constraint the shape is searched, as ``minitron search``
does (same :class:`~minitron_deploy.search.SearchSettings`, same candidates from one scoring
pass): every candidate is pruned from a copy of the model and ranked by ``config["score_func"]``
(higher is better), the best one is applied, and ``best["candidates"]`` lists them all with
their scores. ``memory_mb`` counts as ModelOpt does: MiB (2**20 bytes) of 16-bit weights plus
the 16-bit KV cache, here of ``search``'s ``at_batch`` sequences (default 1) of ``isl + osl``
tokens (default 512 + 128; ModelOpt's Megatron search assumes 4096, so set them to match).
Ranking after a short distillation needs a teacher folder and data: use ``minitron search`` for
that.
"""

from __future__ import annotations

from typing import Any

from modelopt.torch.nas.conversion import NASModeRegistry
from modelopt.torch.opt.config import ModeloptBaseConfig
from modelopt.torch.opt.mode import ConvertReturnType, ModeDescriptor
from modelopt.torch.opt.searcher import BaseSearcher, SearchConfig, SearchStateDict
from modelopt.torch.prune.pruning import PruneModeRegistry
from torch import nn

from minitron_deploy.core.errors import MinitronError
from minitron_deploy.core.schema import fields_of, modelopt_fields
from minitron_deploy.core.shape import ModelShape
from minitron_deploy.importance.scores import ImportanceScores
from minitron_deploy.pruning.api import prune_model
from minitron_deploy.pruning.scoring import score_forward_loop
from minitron_deploy.pruning.settings import PruneSettings
from minitron_deploy.pruning.target import resolve_target
from minitron_deploy.pruning.trim import KeepPlan, resolve_rescale_norms, trim_model
from minitron_deploy.search import SearchSettings, plan_search
from minitron_deploy.search.rank import rank_after_pruning, shape_spec

MODE_NAME = "hf_minitron"
_STATE_ATTR = "_minitron_pruning"
#: export_config keys accepted, mapped to PruneSettings fields (Megatron's names are accepted too).
_EXPORT_KEYS = {"hidden_size": "hidden_size", "ffn_hidden_size": "ffn_hidden_size",
                "num_attention_heads": "num_heads", "num_key_value_heads": "num_kv_heads",
                "num_query_groups": "num_kv_heads", "num_layers": "num_layers",
                "num_experts": "num_experts", "num_moe_experts": "num_experts",
                "moe_ffn_hidden_size": "moe_ffn_hidden_size",
                "shared_expert_ffn_hidden_size": "shared_expert_ffn_hidden_size"}


def modelopt_settings() -> dict[str, Any]:
    """The mode's settings in its config, with their defaults (plain values)."""
    defaults = PruneSettings().record()
    return {f.name: defaults[f.name] for f in modelopt_fields(PruneSettings)}


class HFMinitronConfig(ModeloptBaseConfig):
    """Configuration of the ``hf_minitron`` mode (all settings live in the search config)."""


#: Metric constraints and the target each becomes (a MiB of memory is 2**20 bytes, as ModelOpt
#: counts it), for PruneSettings and SearchSettings alike.
_METRIC_TARGETS = {"params": "target_params", "active_params": "target_active_params",
                   "memory_mb": "target_memory_gb"}


def _target_values(constraints: dict) -> dict[str, Any]:
    """The constraints as PruneSettings or SearchSettings target fields."""
    known = {"export_config", *_METRIC_TARGETS}
    if set(constraints) - known or len(constraints) != 1:
        raise MinitronError(f"hf_minitron takes exactly one constraint of "
                            f"{', '.join(sorted(known))}, got "
                            f"{', '.join(map(str, constraints)) or 'none'}")
    (key, value), = constraints.items()
    if key == "export_config":
        bad = set(value) - set(_EXPORT_KEYS)
        if bad:
            raise MinitronError(f"unsupported export_config keys {sorted(bad)}; "
                                f"use {sorted(_EXPORT_KEYS)}")
        return {_EXPORT_KEYS[k]: v for k, v in value.items()}
    if key != "memory_mb" and isinstance(value, str) and value.endswith("%"):
        value = float(value[:-1]) / 100
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MinitronError(f"{key}: {value!r} is not a number")
    return {_METRIC_TARGETS[key]: value / 1024 if key == "memory_mb" else value}


class HFMinitronSearcher(BaseSearcher):
    """Scores importance (one forward loop) and trims to the constraint; no NAS."""

    @property
    def default_search_config(self) -> dict:
        return {**super().default_search_config, **modelopt_settings(), "search": None}

    @property
    def default_state_dict(self) -> SearchStateDict:
        return {"best": {}}

    def sanitize_search_config(self, config: SearchConfig | None) -> SearchConfig:
        """Refuse settings the mode does not take in one line (ModelOpt asserts)."""
        reasons = {f.name: f.setting.modelopt for f in fields_of(PruneSettings)}
        for key in config or {}:
            if key in self.default_search_config:
                continue
            if reasons.get(key):
                raise MinitronError(f"{key}: not a setting of the ModelOpt mode ({reasons[key]})")
            raise MinitronError(f"unknown key(s) {key} (known: "
                                f"{', '.join(self.default_search_config)})")
        return super().sanitize_search_config(config)

    def run_search(self) -> None:
        model = self.model
        source = ModelShape.from_config(model.config)
        base = {k: self.config[k] for k in modelopt_settings()}
        found = None
        if self.config["search"] is None:
            if "memory_mb" in self.constraints:
                raise MinitronError("memory_mb: a memory constraint is met by search; give "
                                    "config['search'] ({} for the defaults) and a score_func")
            settings = PruneSettings.from_mapping({**base, **_target_values(self.constraints)})
            target = resolve_target(model.config, settings)
            scores = self._scores(settings, source, [source.num_layers - target.shape.num_layers])
        else:
            search = self._search_settings(base)
            plan = plan_search(model.config, search)
            scores = self._scores(search, source, [source.num_layers - c.shape.num_layers
                                                   for c in plan.candidates])
            score_func = self.config["score_func"]
            order, losses = rank_after_pruning(model, scores, plan.candidates,
                                               search.depth_metric,
                                               lambda m: [-float(score_func(m))])
            settings = PruneSettings.make(shape_spec(order[0], search.align), search.scoring(),
                                          rescale_norms=base["rescale_norms"])
            target = resolve_target(model.config, settings)
            found = [{"export_config": c.student.as_dict(), "params": c.prediction.params,
                      "active_params": c.prediction.active_params,
                      "memory_mb": c.prediction.memory_gib * 1024,
                      "speedup": c.prediction.speedup, "score": -losses[c.key]} for c in order]
        rescale_norms = resolve_rescale_norms(model.config, settings.rescale())
        plan = prune_model(model, scores, target, settings.depth_metric, rescale_norms)
        state = {"source_shape": source.as_dict(), "plan": plan.to_json(),
                 "rescale_norms": rescale_norms, "settings": settings.record()}
        setattr(model, _STATE_ATTR, state)
        experts = {} if target.experts is None else {  # the export_config keys of the experts
            k: v for k, v in target.experts.as_dict().items() if k in _EXPORT_KEYS}
        self.best = {"export_config": {**target.shape.as_dict(), **experts},
                     "reason": target.reason, "params": target.params_after,
                     "active_params": target.counts_after.active,
                     "align": target.align.as_dict(), "rescale_norms": rescale_norms}
        if found is not None:
            self.best["candidates"] = found

    def _search_settings(self, base: dict[str, Any]) -> SearchSettings:
        """``config["search"]`` over the mode's settings, for a metric constraint; the
        candidates are ranked by ``config["score_func"]`` right after pruning."""
        if not set(self.constraints) <= set(_METRIC_TARGETS):
            raise MinitronError("search: the ModelOpt mode searches under a "
                                f"{', '.join(_METRIC_TARGETS)} constraint, not export_config")
        names = {f.name for f in fields_of(SearchSettings)}
        search = SearchSettings.from_mapping(
            {**{k: v for k, v in base.items() if k in names}, **self.config["search"],
             **_target_values(self.constraints)}, "search")
        if search.rank_by != "loss":
            raise MinitronError("search.rank_by: the ModelOpt mode ranks by config['score_func'] "
                                "right after pruning; the short distillation needs minitron search")
        if self.config["score_func"] is None:
            raise MinitronError("search needs config['score_func'] (model -> score, higher is "
                                "better, e.g. minus a validation loss) to rank the candidates")
        return search

    def _scores(self, settings, source: ModelShape, blocks: list[int]) -> ImportanceScores:
        """One artifact for every depth in ``blocks``: the saved one (checked against these
        settings and weights) or one forward loop."""
        model = self.model
        blocks = sorted(set(blocks) - {0})
        if settings.scores:
            scores = ImportanceScores.load(settings.scores)
            for block in blocks or [0]:
                scores.check_reuse(settings, source, block)
            scores.check_weights(model)
            return scores
        if self.forward_loop is None:
            raise MinitronError("hf_minitron needs config['forward_loop'] (or 'data_loader') or "
                                "config['scores']")
        if settings.depth_metric == "accuracy" and blocks:
            raise MinitronError("depth_metric: 'accuracy' needs a tokenizer and a task; "
                                "use minitron prune or reuse its scores")
        return score_forward_loop(model, self.forward_loop, settings,
                                  block_sizes=sorted({1, *blocks}), depth_block_sizes=blocks)


def _convert(model: nn.Module, config: ModeloptBaseConfig) -> ConvertReturnType:
    from minitron_deploy.arch import get_adapter

    get_adapter(model.config)  # refuse unsupported families at convert time
    return model, {}


def _restore(model: nn.Module, config: ModeloptBaseConfig, metadata: dict) -> nn.Module:
    """Re-apply the recorded trim to a source-shaped model; a model already built with the
    pruned config (``from_pretrained`` of the pruned checkpoint) is left as it is."""
    state = metadata.get("minitron")
    if state is None:
        return model
    if ModelShape.from_config(model.config).as_dict() == state["source_shape"]:
        trim_model(model, KeepPlan.from_json(state["plan"]), state.get("rescale_norms"))
    setattr(model, _STATE_ATTR, state)
    return model


def _record_plan(model: nn.Module, config: ModeloptBaseConfig, metadata: dict) -> None:
    """Store the kept indices in the mode's metadata (before export_nas and before saving)."""
    state = getattr(model, _STATE_ATTR, None)
    if state is not None:
        metadata["minitron"] = state


class HFMinitronModeDescriptor(ModeDescriptor):
    """The ``hf_minitron`` mode: Minitron pruning of Hugging Face causal LMs."""

    @property
    def name(self) -> str:
        return MODE_NAME

    @property
    def config_class(self) -> type[ModeloptBaseConfig]:
        return HFMinitronConfig

    @property
    def next_modes(self) -> set[str] | None:
        return {"export_nas", "kd_loss", "quantize"}

    @property
    def export_mode(self) -> str | None:
        return "export_nas"

    @property
    def search_algorithm(self) -> type[BaseSearcher]:
        return HFMinitronSearcher

    @property
    def convert(self):
        return _convert

    @property
    def restore(self):
        return _restore

    @property
    def update_for_save(self):
        return _record_plan

    @property
    def update_for_new_mode(self):
        return _record_plan


def _register() -> None:
    for registry in (PruneModeRegistry, NASModeRegistry):
        if MODE_NAME not in registry:
            registry.register_mode(HFMinitronModeDescriptor)


_register()

__all__ = ["HFMinitronConfig", "HFMinitronModeDescriptor", "HFMinitronSearcher", "MODE_NAME",
           "modelopt_settings"]
