"""``DistillConfig``: every setting of a distillation run besides its paths, one schema for
``minitron distill``'s flags, a recipe's ``distill:`` section and the API."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from ..core.errors import MinitronError
from ..core.precision import DEVICES, device_problem
from ..core.schema import (
    at_least,
    below_one,
    in_unit_interval,
    non_negative,
    positive,
    setting,
)
from ..data.text import TextSettings
from ..quantize.schemes import QAD_SCHEMES
from .objectives import PRECISIONS
from .parallel import STRATEGIES
from .schedule import TrainConfig


@dataclass
class DistillConfig(TextSettings):
    """Everything ``minitron distill`` takes besides paths: where the training text is
    (:class:`TextSettings`), then these. Give ``tokens`` or ``steps``."""

    tokens: int | None = setting(None, "training tokens, e.g. 2e6 (this or --steps)",
                                 unset="none", check=at_least(1))
    steps: int | None = setting(None, "optimizer steps (this or --tokens)", unset="none",
                                check=at_least(1))
    seq_len: int = setting(512, "tokens per training sequence", check=at_least(2))
    batch_size: int = setting(8, "per device micro-batch", check=at_least(1))
    grad_accum: int = setting(1, "micro-batches per optimizer step", check=at_least(1))
    lr: float = setting(1e-4, "peak AdamW learning rate", check=positive)
    min_lr_ratio: float = setting(0.1, "final learning rate of the cosine decay, as a share "
                                       "of the peak", check=in_unit_interval)
    warmup_steps: int | None = setting(None, "linear warmup steps", unset="5% of the steps",
                                       check=at_least(0))
    weight_decay: float = setting(0.01, "AdamW weight decay", check=non_negative)
    max_grad_norm: float = setting(1.0, "gradient clipping norm", check=positive)
    checkpoint_every: int = setting(100, "optimizer steps between resumable checkpoints",
                                    check=at_least(1))
    seed: int = setting(0, "seed of the data order and the held-out split")
    kd_temperature: float = setting(1.0, "softmax temperature of teacher and student in the KL",
                                    check=positive)
    lm_loss_weight: float = setting(0.0, "mix of plain LM loss: 0 = pure KD, 1 = LM only (no "
                                         "teacher)", check=in_unit_interval)
    intermediate_loss: str | None = setting(
        None, "also match hidden states at mapped layers", unset="logits only",
        choices=("cosine", "mse"))
    intermediate_weight: float = setting(1.0, "weight of the hidden-state loss",
                                         check=non_negative)
    intermediate_layers: int = setting(1, "how many evenly spaced layers to match (the last "
                                          "one included)", check=at_least(1))
    router_aux_loss_coef: float = setting(0.0, "mixture-of-experts students: add this times "
                                               "the model's own router load-balancing loss "
                                               "(0 = off)", check=non_negative)
    teacher_correction_steps: int = setting(0, "fine-tune the teacher on the data this many "
                                               "steps before KD", check=at_least(0))
    teacher_correction_lr: float = setting(1e-5, "learning rate of the teacher fine-tuning",
                                           check=positive)
    chunk_tokens: int = setting(512, "tokens per chunk of the KL computation (memory vs "
                                     "speed)", check=at_least(1))
    device: str = setting("auto", f"{DEVICES} (auto: CUDA when a GPU is visible, else the CPU)",
                          check=device_problem)
    precision: str = setting("auto", "auto: bf16 autocast where it is faster (GPUs; CPUs "
                                     "measured once, e.g. with AMX), else fp32",
                             choices=PRECISIONS)
    strategy: str = setting("auto", "single process, DDP or FSDP2 under torchrun (auto: the "
                                    "memory planner's choice: DDP where replicas fit, else "
                                    "FSDP)", choices=STRATEGIES)
    teacher_sharding: str = setting("auto", "FSDP only: shard the frozen teacher for forward "
                                            "or replicate it on every rank (auto: replicate "
                                            "where it fits)",
                                    choices=("auto", "shard", "replicate"))
    activation_checkpointing: bool = setting(False, "recompute each decoder layer in the "
                                                    "backward pass: less activation memory "
                                                    "for about 30% more compute")
    quantize: str | None = setting(
        None, "quantization-aware distillation: train the student through this scheme's fake "
              "quantizers (the numerics of its checkpoint) and write it as that quantized "
              "compressed-tensors checkpoint, as minitron quantize does (other schemes: distill, "
              "then minitron quantize)", unset="a full-precision student", choices=QAD_SCHEMES)
    val_fraction: float = setting(0.0, "hold out this share of documents; distill.json "
                                       "reports their loss before and after training",
                                  check=below_one)
    val_sequences: int = setting(16, "held-out sequences evaluated when val_fraction is set",
                                 check=at_least(1))

    @property
    def uses_teacher(self) -> bool:
        """Whether a teacher forward is needed (not for LM-only retraining)."""
        return self.lm_loss_weight < 1.0 or self.intermediate_loss is not None

    def train_config(self, world: int) -> TrainConfig:
        """TrainConfig with ``steps`` resolved from the token budget."""
        if (self.tokens is None) == (self.steps is None):
            raise MinitronError("give exactly one of --tokens and --steps")
        per_step = self.batch_size * self.grad_accum * self.seq_len * world
        steps = self.steps if self.steps is not None else math.ceil(self.tokens / per_step)
        shared = {f.name for f in fields(TrainConfig)} - {"steps"}
        return TrainConfig(steps=steps, **{k: getattr(self, k) for k in shared if hasattr(self, k)})
