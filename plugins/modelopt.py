"""ModelOpt compression mode ``hf_minitron``: Minitron pruning of Hugging Face decoders.

Importing this module registers the mode with ModelOpt's prune (and NAS) registry::

    import minitron_plugins.modelopt  # noqa: F401
    import modelopt.torch.prune as mtp
    model, _ = mtp.prune(model, mode="hf_minitron",
                         constraints={"export_config": {"hidden_size": 3072, "ffn_hidden_size": 9216}},
                         dummy_input=batch, config={"forward_loop": loop})

It runs the same code as ``minitron prune`` (:func:`minitron_deploy.prune_model`). Scores come
from the forward loop (width by ``config["criterion"]``, default ``activation``, + Block
Importance, so depth uses ``bi``) or from a saved artifact
(``config={"scores_path": ..., "depth_metric": "loss"}``). A ``params`` budget picks sizes aligned
to ``config["align"]`` (default ``{"hidden": 64, "ffn": 64, "heads": 1}``, see
:class:`~minitron_deploy.align.Alignment`). The kept indices are recorded in the
ModelOpt state, so ``mto.save``/``mto.restore`` and HF checkpointing round-trip the model.
"""

from __future__ import annotations

from torch import nn

from minitron_deploy.align import Alignment
from minitron_deploy.errors import MinitronError
from minitron_deploy.importance.scores import ImportanceScores
from minitron_deploy.prune import prune_model
from minitron_deploy.scoring import ScoringSettings, score_activations
from minitron_deploy.shape import ModelShape
from minitron_deploy.target import TargetSpec, resolve_target
from minitron_deploy.trim import KeepPlan, trim_model
from modelopt.torch.nas.conversion import NASModeRegistry
from modelopt.torch.opt.config import ModeloptBaseConfig
from modelopt.torch.opt.mode import ConvertReturnType, ModeDescriptor
from modelopt.torch.opt.searcher import BaseSearcher, SearchStateDict
from modelopt.torch.prune.pruning import PruneModeRegistry

MODE_NAME = "hf_minitron"
_STATE_ATTR = "_minitron_pruning"
#: export_config keys accepted, mapped to TargetSpec fields (Megatron's names are accepted too).
_EXPORT_KEYS = {"hidden_size": "hidden_size", "ffn_hidden_size": "ffn_hidden_size",
                "num_attention_heads": "num_heads", "num_key_value_heads": "num_kv_heads",
                "num_query_groups": "num_kv_heads", "num_layers": "num_layers"}
#: search-config keys passed through to ScoringSettings (defaults from there).
_SCORING_KEYS = ("criterion", "seq_agg", "batch_agg", "seed", "zo_steps", "zo_eps", "group_size")


class HFMinitronConfig(ModeloptBaseConfig):
    """Configuration of the ``hf_minitron`` mode (all settings live in the search config)."""


def _spec_from_constraints(constraints: dict, align: dict) -> TargetSpec:
    unknown = set(constraints) - {"export_config", "params"}
    if unknown or len(constraints) != 1:
        raise MinitronError("hf_minitron takes exactly one constraint: 'export_config' or 'params'")
    bad = set(align) - set(Alignment().as_dict())
    if bad:
        raise MinitronError(f"unsupported align keys {sorted(bad)}; use hidden, ffn, heads")
    if "params" in constraints:
        value = constraints["params"]
        if isinstance(value, str) and value.endswith("%"):
            value = float(value[:-1]) / 100
        return TargetSpec(target_params=float(value), align=Alignment(**align))
    export = constraints["export_config"]
    bad = set(export) - set(_EXPORT_KEYS)
    if bad:
        raise MinitronError(f"unsupported export_config keys {sorted(bad)}; "
                            f"use {sorted(_EXPORT_KEYS)}")
    return TargetSpec(**{_EXPORT_KEYS[k]: int(v) for k, v in export.items()},
                      align=Alignment(**align))


class HFMinitronSearcher(BaseSearcher):
    """Scores importance (one forward loop) and trims to the constraint; no NAS."""

    @property
    def default_search_config(self) -> dict:
        defaults = ScoringSettings()
        return {**super().default_search_config, "scores_path": None, "depth_metric": "bi",
                "rescale_norms": None, "align": Alignment().as_dict(),
                **{k: getattr(defaults, k) for k in _SCORING_KEYS}}

    @property
    def default_state_dict(self) -> SearchStateDict:
        return {"best": {}}

    def run_search(self) -> None:
        model = self.model
        target = resolve_target(model.config,
                                _spec_from_constraints(self.constraints, self.config["align"]))
        source = ModelShape.from_config(model.config)
        block = source.num_layers - target.shape.num_layers
        if self.config["scores_path"]:
            scores = ImportanceScores.load(self.config["scores_path"])
        elif self.forward_loop is not None:
            settings = ScoringSettings(depth_metric="bi",
                                       **{k: self.config[k] for k in _SCORING_KEYS})
            scores = score_activations(model, self.forward_loop, settings,
                                       block_sizes=sorted({1, max(block, 1)}))
        else:
            raise MinitronError("hf_minitron needs config['forward_loop'] (or 'data_loader') or "
                                "config['scores_path']")
        plan = prune_model(model, scores, target, self.config["depth_metric"],
                           self.config["rescale_norms"])
        state = {"source_shape": source.as_dict(), "plan": plan.to_json()}
        setattr(model, _STATE_ATTR, state)
        self.best = {"export_config": target.shape.as_dict(), "reason": target.reason,
                     "params": target.params_after, "align": target.align.as_dict()}


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
        trim_model(model, KeepPlan.from_json(state["plan"]))
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

__all__ = ["HFMinitronConfig", "HFMinitronModeDescriptor", "HFMinitronSearcher", "MODE_NAME"]
