"""Memory planner: per-rank distillation memory per strategy, the strategy choice and refusals,
and ``minitron compress --dry-run --gpus N``."""

import dataclasses
import json

import pytest
import torch
from test_compress import LLAMA31_8B
from tiny_models import tiny_config

from minitron_deploy.cli import main
from minitron_deploy.core.errors import MinitronError
from minitron_deploy.core.shape import ModelShape, reshaped_config
from minitron_deploy.distill.api import DistillConfig
from minitron_deploy.distill.memory import (
    GIB,
    ModelSizes,
    activation_bytes,
    choose_strategy,
    distill_memory,
)
from minitron_deploy.pipeline.plan import calibration_memory
from minitron_deploy.pipeline.recipe import packaged_recipe
from minitron_deploy.pruning.settings import PruneSettings

STRATEGIES = [("single", False), ("ddp", False), ("fsdp", False), ("fsdp", True)]


@pytest.fixture(scope="module")
def llama8b():
    from transformers import LlamaConfig

    teacher = LlamaConfig(**LLAMA31_8B)
    student = reshaped_config(teacher, dataclasses.replace(
        ModelShape.from_config(teacher), hidden_size=3072, ffn_hidden_size=9216))
    return teacher, student


@pytest.fixture(scope="module")
def width_recipe_args(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama31-8b")
    (path / "config.json").write_text(json.dumps(LLAMA31_8B))
    work = tmp_path_factory.mktemp("work")
    return ["compress", "--recipe", str(packaged_recipe("llama31-8b-to-4b-width")), "--dry-run",
            "--work-dir", str(work), "--set", f"teacher={path}"]


def _recipe_distill() -> DistillConfig:
    return DistillConfig(tokens=10**9, seq_len=4096, batch_size=1, grad_accum=32)


def test_width_recipe_on_eight_80gb_gpus_picks_fsdp(llama8b, width_recipe_args, capsys):
    choice = choose_strategy(*llama8b, _recipe_distill(), world=8, device_bytes=80 * GIB,
                             gpu=True)
    assert choice.strategy == "fsdp" and not choice.teacher_sharded
    assert not choice.activation_checkpointing and choice.breakdown.total <= 80 * GIB
    assert main([*width_recipe_args, "--gpus", "8", "--device-memory-gb", "80"]) == 0
    out = capsys.readouterr().out
    assert "* fsdp, teacher replicated" in out and "fsdp, teacher replicated" in \
        out.split("round 1 distill")[1].splitlines()[0]
    ddp = next(line for line in out.splitlines() if line.startswith("  ddp"))
    assert ddp.endswith("no")  # replicating student, optimizer and teacher does not fit


def test_width_recipe_on_one_80gb_gpu_refuses_and_says_what_fits(width_recipe_args, capsys):
    assert main([*width_recipe_args, "--gpus", "1", "--device-memory-gb", "80"]) == 2
    captured = capsys.readouterr()
    assert "single" in captured.out and "total" in captured.out  # the table comes first
    assert captured.err.count("\n") == 1
    assert "round 1 distill needs about" in captured.err
    assert "it would fit on 2 GPUs of 80.0 GiB (fsdp" in captured.err


def test_refusal_suggests_a_smaller_micro_batch():
    cfg = tiny_config("llama", vocab_size=32000)
    with pytest.raises(MinitronError) as exc:
        choose_strategy(cfg, cfg, DistillConfig(steps=1, batch_size=64, seq_len=256), world=1,
                        device_bytes=1 * GIB, gpu=False)
    message = str(exc.value)
    assert "\n" not in message and "with micro-batch" in message and "x 256" in message


@pytest.mark.parametrize("strategy,sharded", STRATEGIES)
@pytest.mark.parametrize("gpu", [False, True])
def test_breakdown_sums_to_total(llama8b, strategy, sharded, gpu):
    parts = distill_memory(*llama8b, _recipe_distill(), 8, strategy, gpu, sharded)
    assert parts.total == sum(parts.as_dict().values())
    assert all(v >= 0 for v in parts.as_dict().values())
    assert (parts.buckets > 0) == (strategy == "ddp") and (parts.runtime > 0) == gpu


def test_fsdp_divides_student_state_and_sharded_teacher_by_world(llama8b):
    cfg = _recipe_distill()
    single = distill_memory(*llama8b, cfg, 1, "single", True)
    ddp = distill_memory(*llama8b, cfg, 8, "ddp", True)
    assert ddp.params == single.params and ddp.teacher == single.teacher
    for world in (2, 8, 16):
        fsdp = distill_memory(*llama8b, cfg, world, "fsdp", True, teacher_sharded=True)
        for name in ("params", "grads", "optimizer", "teacher"):
            assert abs(getattr(fsdp, name) * world - getattr(single, name)) <= world
        assert distill_memory(*llama8b, cfg, world, "fsdp", True).teacher == single.teacher


@pytest.mark.parametrize("strategy,sharded", STRATEGIES)
def test_activation_checkpointing_lowers_activations(llama8b, strategy, sharded):
    cfg = _recipe_distill()
    off = distill_memory(*llama8b, cfg, 8, strategy, True, sharded, False)
    on = distill_memory(*llama8b, cfg, 8, strategy, True, sharded, True)
    assert on.activations < off.activations / 5 and on.total < off.total
    assert dataclasses.replace(on, activations=0, runtime=0) == \
        dataclasses.replace(off, activations=0, runtime=0)


@pytest.mark.parametrize("strategy,sharded", STRATEGIES)
def test_memory_grows_with_micro_batch_and_sequence(strategy, sharded):
    config = tiny_config("llama")

    def total(batch, seq):
        cfg = DistillConfig(steps=1, batch_size=batch, seq_len=seq)
        return distill_memory(config, config, cfg, 8, strategy, True, sharded).total

    for seq in (256, 1024, 4096):
        assert total(1, seq) < total(2, seq) < total(4, seq) < total(8, seq)
    for batch in (1, 4):
        assert total(batch, 512) < total(batch, 1024) < total(batch, 2048) < total(batch, 4096)


def _saved_bytes(model, seq_len: int, autocast: bool) -> int:
    """Bytes of the tensors autograd saves in a forward (parameters excluded)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    ids = torch.randint(0, model.config.vocab_size, (2, seq_len),
                        generator=torch.Generator().manual_seed(0))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        model(input_ids=ids, use_cache=False)
    return sum(saved.values())


@pytest.mark.parametrize("dtype,autocast,compute,residual", [
    (torch.float32, False, 4, 4),  # CPU fp32
    (torch.float32, True, 2, 4),  # fp32 parameters under bf16 autocast (single, DDP)
    (torch.bfloat16, False, 2, 2)])  # bf16 parameters (FSDP's bf16 policy)
def test_activation_model_matches_what_autograd_saves(dtype, autocast, compute, residual):
    from transformers import AutoModelForCausalLM

    config = tiny_config("llama")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).to(dtype).train()
    sizes = ModelSizes.from_config(config)
    # The difference between two sequence lengths cancels the weight copies autocast saves.
    measured = _saved_bytes(model, 64, autocast) - _saved_bytes(model, 32, autocast)
    predicted = (activation_bytes(sizes, 128, compute, residual, False)
                 - activation_bytes(sizes, 64, compute, residual, False))
    assert measured == pytest.approx(predicted, rel=0.03)


def test_auto_precision_on_a_cpu_plans_what_the_run_computes_in(llama8b, monkeypatch):
    """``auto`` on a CPU is planned as the runtime resolves it: bf16 where the probe chose it
    (AMX, AVX512-BF16), fp32 elsewhere; the same as asking for that precision."""
    import minitron_deploy.distill.memory as memory

    teacher, student = llama8b
    cfg = DistillConfig(tokens=1, seq_len=512, batch_size=2)
    planned = {}
    for probed in ("bf16", "fp32"):
        monkeypatch.setattr(memory, "resolve_precision",
                            lambda device, requested, probed=probed:
                            probed if requested == "auto" else requested)
        planned[probed] = distill_memory(teacher, student, cfg, 1, "single", gpu=False)
        asked = distill_memory(teacher, student, dataclasses.replace(cfg, precision=probed), 1,
                               "single", gpu=False)
        assert planned[probed] == asked
    # autocast keeps bf16 copies of the weights and halves the saved activations
    assert planned["bf16"].compute > planned["fp32"].compute == 0
    assert planned["bf16"].activations < planned["fp32"].activations


def test_choice_follows_the_config(llama8b):
    base = _recipe_distill()
    device = 80 * GIB
    assert choose_strategy(*llama8b, base, 1, 640 * GIB, True).strategy == "single"
    ddp = choose_strategy(*llama8b, dataclasses.replace(base, strategy="ddp"), 8, 200 * GIB,
                          True)
    assert ddp.strategy == "ddp"
    forced = choose_strategy(*llama8b, dataclasses.replace(base, activation_checkpointing=True),
                             8, device, True)
    assert forced.activation_checkpointing and forced.strategy == "fsdp"
    shard = choose_strategy(*llama8b, dataclasses.replace(base, teacher_sharding="shard"), 8,
                            device, True)
    assert shard.teacher_sharded
    squeezed = choose_strategy(*llama8b, base, 2, device, True)  # 2 GPUs: shard or checkpoint
    assert squeezed.strategy == "fsdp" and squeezed.breakdown.total <= device
    with pytest.raises(MinitronError, match="one process"):
        choose_strategy(*llama8b, dataclasses.replace(base, strategy="single"), 8, device, True)


def test_layer_by_layer_calibration_needs_less_than_the_whole_model(llama8b):
    sizes = ModelSizes.from_config(llama8b[0])
    prune = PruneSettings(calib_samples=1024, seq_len=4096, batch_size=4)
    whole = calibration_memory(sizes, prune, layerwise=False)
    layer = calibration_memory(sizes, prune, layerwise=True)
    assert whole.weights == 4 * sizes.params and whole.hidden_states == 0
    assert layer.weights < whole.weights / 10 and layer.hidden_states > 0
    assert layer.total - layer.hidden_states < whole.total


@pytest.fixture
def no_proc_meminfo(monkeypatch):
    """A machine without psutil and without /proc/meminfo (as macOS without psutil)."""
    import pathlib
    import sys

    read_text = pathlib.Path.read_text

    def refuse_proc(path, *args, **kwargs):
        if str(path).startswith("/proc/"):
            raise FileNotFoundError(path)
        return read_text(path, *args, **kwargs)

    monkeypatch.setitem(sys.modules, "psutil", None)  # import psutil raises ImportError
    monkeypatch.setattr(pathlib.Path, "read_text", refuse_proc)


def test_cpu_memory_is_read_without_proc_meminfo(no_proc_meminfo):
    from minitron_deploy.bench.hardware import free_memory
    from minitron_deploy.core.devices import device_memory

    total = device_memory("cpu")
    assert total > 0 and 0 < free_memory(torch.device("cpu")) <= total


def test_cpu_memory_comes_from_proc_meminfo_where_it_exists(tmp_path):
    from minitron_deploy.core.devices import _meminfo

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16384 kB\nMemFree:  1 kB\nMemAvailable:    8192 kB\n")
    assert _meminfo(meminfo) == (16384 * 1024, 8192 * 1024)
    assert _meminfo(tmp_path / "absent") is None


@pytest.mark.parametrize("scheme", ["fp8", "w4a16", "gguf-q4_0"])
def test_quantize_stage_plans_the_students_bytes_in_its_scheme(width_recipe_args, scheme,
                                                                capsys):
    """The dry run's quantize line gives the final student's weight bytes as ``scheme``
    stores them (the byte model that ``tests/test_weight_bytes.py`` checks against files)."""
    from minitron_deploy.pipeline.plan import plan_recipe
    from minitron_deploy.pipeline.recipe import load_recipe
    from minitron_deploy.quantize.schemes import weight_bytes

    assert main([*width_recipe_args, "--set", f"quantize.scheme={scheme}", "--gpus", "8",
                 "--device-memory-gb", "80"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("quantize"))
    from transformers import LlamaConfig

    from minitron_deploy.pruning.target import resolve_target

    teacher = LlamaConfig(**LLAMA31_8B)
    recipe = load_recipe(packaged_recipe("llama31-8b-to-4b-width"),
                         {"teacher": width_recipe_args[-1].removeprefix("teacher="),
                          "quantize.scheme": scheme})
    plan = plan_recipe(recipe, width_recipe_args[width_recipe_args.index("--work-dir") + 1])
    quantized = next(p for p in plan if p.name == "quantize")
    student = reshaped_config(teacher, resolve_target(teacher, recipe.prune).shape)
    expected = weight_bytes(student, scheme)
    assert quantized.disk_bytes == expected and f"{expected / GIB:.2f} GiB of weights" in line
    # 16-bit embeddings and lm_head (w4a16) weigh 1.6 GB of the 4-bit student
    assert expected < (0.6 if scheme == "fp8" else 0.4) * 2 * quantized.params
