"""The ``minitron`` CLI with a deterministic crash point, for the kill-and-rerun tests: argv is
``POINT N CLI_ARGS...``; the process kills itself with SIGKILL at the N-th occurrence of POINT:

- ``distill-step``: once distillation step N is logged;
- ``forward``: when a causal LM's N-th forward pass starts (calibration batches);
- ``trtllm-convert``: when the TensorRT-LLM conversion starts (its temp folder exists);
- ``trtllm-save``: halfway through writing the N-th TensorRT-LLM weights file."""

import os
import signal
import sys
from pathlib import Path

import minitron_deploy.distill.api as distill_api
import minitron_deploy.export.trtllm as trtllm
from minitron_deploy.cli import main


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _counter(n: int):
    """A callable that kills the process on its n-th call."""
    calls = [0]

    def tick() -> None:
        calls[0] += 1
        if calls[0] == n:
            _die()
    return tick


def _install(point: str, n: int) -> None:
    tick = _counter(n)
    if point == "distill-step":
        distill = distill_api.distill

        def killing_distill(*args, **kwargs):
            return distill(*args, on_step=lambda record: tick(), **kwargs)
        distill_api.distill = killing_distill
    elif point == "forward":
        import torch
        from transformers import PreTrainedModel

        def hook(module, args):
            if isinstance(module, PreTrainedModel) and hasattr(module, "lm_head"):
                tick()
        torch.nn.modules.module.register_module_forward_pre_hook(hook)
    elif point == "trtllm-convert":
        write = trtllm.write_trtllm

        def killing_write(*args, **kwargs):
            tick()
            return write(*args, **kwargs)
        trtllm.write_trtllm = killing_write
    elif point == "trtllm-save":
        save = trtllm.save_file

        def half_save(tensors, filename, metadata=None):
            save(tensors, filename, metadata=metadata)
            data = Path(filename).read_bytes()
            Path(filename).write_bytes(data[: len(data) // 2])
            tick()  # the n-th file stays half written
            save(tensors, filename, metadata=metadata)
        trtllm.save_file = half_save
    else:
        raise SystemExit(f"unknown crash point {point!r}")


if __name__ == "__main__":
    _install(sys.argv[1], int(sys.argv[2]))
    sys.exit(main(sys.argv[3:]))
