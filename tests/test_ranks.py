"""Ranks that agree under ``torchrun``: work rank 0 does alone (``on_main_rank``) sees a world
of one and trains on all of its tokens; ``precision: auto`` is rank 0's choice on every rank;
long rank-0 work is waited for on a gloo group with a long timeout, not on the default group;
ModelOpt's FP8 calibration syncs with no other process; the default group has a backend for
the CPU and, where CUDA exists, one for the GPU.

Run as a script (``torchrun --nproc-per-node 2 tests/test_ranks.py PAIR OUT``) this file is the
two-rank worker: its default process group times out after ``DEFAULT_TIMEOUT_S`` and every
long piece of rank-0 work (tokenizing, evaluating at a checkpoint, the final write) takes
longer than that. Each rank writes what it saw to ``OUT/rank<N>.json``."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

DEFAULT_TIMEOUT_S, SLOW_S = 4, 5
ALONE = dict(steps=2, seq_len=32, batch_size=2, grad_accum=2, lr=3e-3, checkpoint_every=1,
             precision="fp32")
TOGETHER = dict(steps=2, seq_len=32, batch_size=1, lr=3e-3, checkpoint_every=2,
                strategy="ddp", precision="auto")


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in
            (out / "minitron" / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """The worker's two ranks, their outputs, and the distillation pair they used."""
    from tiny_models import save_distill_pair

    pair = save_distill_pair("llama", tmp_path_factory.mktemp("ranks"))
    out = pair / "out"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent),
                                          os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:0", __file__,
                           str(pair), str(out)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-5000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    return pair, out, ranks


def test_rank0_work_sees_one_rank_and_trains_on_all_its_tokens(two_ranks):
    """A short distillation inside ``on_main_rank`` (as the search's does during pruning)
    equals one process's: every token of its global batch, losses not divided by the ranks."""
    from minitron_deploy.distill.api import DistillConfig, distill

    pair, out, ranks = two_ranks
    assert [r["alone"] for r in ranks] == [[0, 1], [0, 1]]  # rank 0's view, shared
    distill(pair / "teacher", pair / "student", pair / "text.txt", pair / "single",
            DistillConfig(**ALONE))
    alone, single = _log(out / "alone"), _log(pair / "single")
    per_step = ALONE["batch_size"] * ALONE["grad_accum"] * ALONE["seq_len"]
    assert [r["tokens"] for r in alone] == [per_step * (s + 1) for s in range(ALONE["steps"])]
    assert [r["loss"] for r in alone] == pytest.approx([r["loss"] for r in single], rel=1e-5)


def test_auto_precision_is_rank0s_choice_on_every_rank(two_ranks):
    """The probe answers bf16 on rank 0 and fp32 on rank 1: both ranks compute in bf16."""
    _, out, ranks = two_ranks
    assert [r["bf16"] for r in ranks] == [[True], [True]]
    summary = json.loads((out / "together" / "minitron" / "distill.json").read_text())
    assert summary["precision"] == "bf16"


def test_long_rank0_work_outlasts_the_default_groups_timeout(two_ranks):
    """Tokenizing, evaluating at the checkpoint and writing the output each took longer on
    rank 0 than the default group's timeout, and the run completed."""
    _, out, ranks = two_ranks
    assert [r["slow"] for r in ranks] == [["tokenize", "checkpoint", "write"], []]
    assert len(_log(out / "together")) == TOGETHER["steps"]


@pytest.mark.parametrize("cuda, backend", [(False, "gloo"), (True, "cpu:gloo,cuda:nccl")])
def test_process_group_backend_and_device(monkeypatch, cuda, backend):
    """gloo alone without CUDA; with CUDA also NCCL (a ``--device cpu`` run still has gloo),
    and the rank's GPU is selected only where CUDA exists."""
    import torch.distributed as dist

    from minitron_deploy.core import dist as ranks

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: calls.append(("set_device", i)))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda b: calls.append(("init", b)))
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert ranks.backend() == backend
    env = ranks.distributed_env()
    assert (env.rank, env.world, env.local_rank) == (1, 2, 1)
    assert calls == [("set_device", 1)] * cuda + [("init", backend)]


def test_fp8_calibration_syncs_with_no_other_process(tmp_path, monkeypatch):
    """ModelOpt all-reduces calibration ranges over the default group whenever one exists;
    FP8 calibration (run by rank 0 alone during export) must not."""
    pytest.importorskip("modelopt.torch.quantization")
    import torch.distributed as dist
    from tiny_models import tiny_model

    from minitron_deploy.export.fp8 import calibrate_fp8

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    reduced = []
    all_reduce = dist.all_reduce
    monkeypatch.setattr(dist, "all_reduce", lambda *a, **k: reduced.append(1) or
                        all_reduce(*a, **k))
    try:
        model = calibrate_fp8(tiny_model("llama"), [torch.randint(0, 64, (2, 16))])
    finally:
        dist.destroy_process_group()
    assert reduced == []
    calibrated = [q.amax for q in model.modules() if hasattr(q, "amax") and q.is_enabled]
    assert calibrated and all(amax is not None for amax in calibrated)


def _worker(pair: Path, out: Path) -> None:
    """See the module docstring."""
    import time
    from datetime import timedelta

    import torch.distributed as dist

    dist.init_process_group("gloo", timeout=timedelta(seconds=DEFAULT_TIMEOUT_S))
    rank = dist.get_rank()
    from minitron_deploy.core import precision
    from minitron_deploy.core.dist import distributed_env, on_main_rank, release
    from minitron_deploy.data import tokens
    from minitron_deploy.distill import api, objectives, trainer
    from minitron_deploy.distill.api import DistillConfig

    paths = [pair / "teacher", pair / "student", pair / "text.txt"]
    precision._cpu_precision = lambda: "bf16" if rank == 0 else "fp32"  # ranks disagree
    bf16, slow = set(), []
    autocast_for = trainer.autocast_for

    def spied_autocast(device, requested):
        bf16.add(objectives.uses_bf16(device, requested))
        return autocast_for(device, requested)

    def slowly(name, fn):
        def run(*args, **kwargs):
            slow.append(name)
            time.sleep(SLOW_S)
            return fn(*args, **kwargs)
        return run
    originals = tokens.build_token_file, api.save_checkpoint_atomic
    trainer.autocast_for = spied_autocast
    tokens.build_token_file = slowly("tokenize", tokens.build_token_file)
    api.save_checkpoint_atomic = slowly("write", api.save_checkpoint_atomic)
    api.distill(*paths, out / "together", DistillConfig(**TOGETHER),
                on_checkpoint=slowly("checkpoint", lambda step, student: None))
    trainer.autocast_for = autocast_for
    tokens.build_token_file, api.save_checkpoint_atomic = originals

    view = on_main_rank(lambda: [distributed_env().rank, distributed_env().world])
    on_main_rank(lambda: api.distill(*paths, out / "alone", DistillConfig(**ALONE)))
    (out / f"rank{rank}.json").write_text(json.dumps(
        {"alone": view, "bf16": sorted(bf16), "slow": slow}))
    release()


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), Path(sys.argv[2]))
