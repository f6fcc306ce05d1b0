"""Process groups and data-parallel strategies for training under ``torchrun``.

- ``single``: one process.
- ``ddp``: ``DistributedDataParallel``; every rank holds the whole student, its gradients and
  optimizer states, and the whole teacher.
- ``fsdp``: FSDP2 (``torch.distributed.fsdp.fully_shard``) per decoder layer and on the root:
  the student's parameters, gradients and AdamW states are sharded over the ranks; on GPU the
  compute runs in bf16 with fp32 gradient reduction (``MixedPrecisionPolicy``). The frozen
  teacher is either replicated or sharded the same way for forward only.

Every collective here goes over the rank view's ``group`` (``DistEnv`` from ``core/dist.py``),
never the default one.
"""

from __future__ import annotations

import torch
from torch import nn

from ..arch import get_adapter
from ..core.dist import DistEnv
from ..core.errors import MinitronError

STRATEGIES = ("auto", "single", "ddp", "fsdp")


def check_strategy(strategy: str, env: DistEnv) -> None:
    if strategy not in STRATEGIES:
        raise MinitronError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    if strategy == "single" and env.world > 1:
        raise MinitronError(f"strategy single runs in one process, but {env.world} were "
                            "launched; use ddp or fsdp under torchrun")
    if strategy in ("ddp", "fsdp") and env.group is None:
        raise MinitronError(f"strategy {strategy} needs a process group: launch with "
                            "`torchrun --nproc-per-node N -m minitron_deploy.cli ...`")


def _mesh(device: torch.device, env: DistEnv):
    from torch.distributed.device_mesh import DeviceMesh

    return DeviceMesh.from_group(env.group, device.type)


def _policy(bf16: bool):
    """bf16 compute with fp32 gradient reduction, or the parameters' own dtype."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
            if bf16 else MixedPrecisionPolicy())


def shard_model(model: nn.Module, device: torch.device, bf16: bool, env: DistEnv,
                reshard_after_forward: bool = True) -> None:
    """``fully_shard`` every decoder layer of a Hugging Face model over ``env``'s group, then
    the model itself (embeddings, final norm and LM head form the root group). Parameters
    move to ``device``."""
    from torch.distributed.fsdp import fully_shard

    mesh, policy = _mesh(device, env), _policy(bf16)
    for layer in get_adapter(model.config).layers(model):
        fully_shard(layer, mesh=mesh, mp_policy=policy,
                    reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)


def shard_objective(objective: nn.Module, device: torch.device, bf16: bool,
                    env: DistEnv) -> None:
    """Shard an objective's student (``shard_model``), then the objective itself so whatever
    it adds (e.g. learned hidden-state projections) is sharded too; what is sharded already
    stays as it is. Collective."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    if not is_sharded(objective.student):
        shard_model(objective.student, device, bf16, env)
    if not isinstance(objective, FSDPModule):
        fully_shard(objective, mesh=_mesh(device, env), mp_policy=_policy(bf16))


def is_sharded(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in module.modules())


def wrap_ddp(module: nn.Module, device: torch.device, env: DistEnv) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[device.index]
                                   if device.type == "cuda" else None, process_group=env.group)


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor of ``module``'s state dict, unsharded, on the CPU of rank 0 (other ranks
    get an empty dict). Collective: every rank must call it."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
    )

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True,
                                                                  cpu_offload=True))


def plain_copy(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """An unsharded Hugging Face model of ``model``'s class and config holding ``state``
    (the gathered weights of a sharded model), for ``save_pretrained``."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(model.config, dtype=next(iter(state.values())).dtype)
    plain.load_state_dict(state, assign=True, strict=False)
    plain.tie_weights()
    missing = [n for n, p in plain.named_parameters() if p.is_meta]
    if missing:
        raise MinitronError(f"gathered weights lack {', '.join(missing[:3])}")
    return plain
