"""Process groups and data-parallel strategies for training under ``torchrun``.

- ``single``: one process.
- ``ddp``: ``DistributedDataParallel``; every rank holds the whole student, its gradients and
  optimizer states, and the whole teacher.
- ``fsdp``: FSDP2 (``torch.distributed.fsdp.fully_shard``) per decoder layer and on the root:
  the student's parameters, gradients and AdamW states are sharded over the ranks; on GPU the
  compute runs in bf16 with fp32 gradient reduction (``MixedPrecisionPolicy``). The frozen
  teacher is either replicated or sharded the same way for forward only.

gloo on CPU, NCCL on GPU; ``torch.cuda.set_device(local_rank)`` before anything touches a GPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from ..arch import get_adapter
from ..errors import MinitronError

STRATEGIES = ("auto", "single", "ddp", "fsdp")


@dataclass
class DistEnv:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def distributed_env() -> DistEnv:
    """Rank and world size from ``torchrun``'s environment; starts the process group (NCCL on
    GPU after ``set_device(local_rank)``, gloo on CPU), also for one rank under torchrun."""
    if "WORLD_SIZE" not in os.environ:
        return DistEnv()
    world = int(os.environ["WORLD_SIZE"])
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
            dist.init_process_group("nccl")
        else:
            dist.init_process_group("gloo")
    return DistEnv(dist.get_rank(), world, local_rank)


def barrier(env: DistEnv) -> None:
    """Wait for every rank (no-op in one process)."""
    if env.world > 1:
        import torch.distributed as dist

        dist.barrier()


def all_mean(values: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Mean of ``values`` over the ranks, on the CPU."""
    if env.world > 1:
        import torch.distributed as dist

        values = values.clone()
        dist.all_reduce(values)
        values /= env.world
    return values.cpu()


def check_strategy(strategy: str, env: DistEnv) -> None:
    if strategy not in STRATEGIES:
        raise MinitronError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    if strategy == "single" and env.world > 1:
        raise MinitronError(f"strategy single runs in one process, but {env.world} were "
                            "launched; use ddp or fsdp under torchrun")
    if strategy in ("ddp", "fsdp") and "WORLD_SIZE" not in os.environ:
        raise MinitronError(f"strategy {strategy} needs a process group: launch with "
                            "`torchrun --nproc-per-node N -m minitron_deploy.cli ...`")


def _mesh(device: torch.device):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (torch.distributed.get_world_size(),))


def _policy(bf16: bool):
    """bf16 compute with fp32 gradient reduction, or the parameters' own dtype."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
            if bf16 else MixedPrecisionPolicy())


def shard_model(model: nn.Module, device: torch.device, bf16: bool,
                reshard_after_forward: bool = True) -> None:
    """``fully_shard`` every decoder layer of a Hugging Face model, then the model itself
    (embeddings, final norm and LM head form the root group). Parameters move to ``device``."""
    from torch.distributed.fsdp import fully_shard

    mesh, policy = _mesh(device), _policy(bf16)
    for layer in get_adapter(model.config).layers(model):
        fully_shard(layer, mesh=mesh, mp_policy=policy,
                    reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)


def shard_root(module: nn.Module, device: torch.device, bf16: bool) -> None:
    """``fully_shard`` what is left of an objective (e.g. learned hidden-state projections)
    after its student was sharded, so every trainable parameter is a sharded DTensor."""
    from torch.distributed.fsdp import fully_shard

    fully_shard(module, mesh=_mesh(device), mp_policy=_policy(bf16))


def is_sharded(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in module.modules())


def wrap_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[device.index]
                                   if device.type == "cuda" else None)


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor of ``module``'s state dict, unsharded, on the CPU of rank 0 (other ranks
    get an empty dict). Collective: every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

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
