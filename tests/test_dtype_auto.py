"""dtype ``auto``, the default of ``minitron bench`` and ``minitron serve``: resolved by the
precision probe (its timings injected here) and passed to vLLM explicitly, never left to
vLLM's own ``auto`` (bf16 on every CPU). No vLLM runs: the runner and ``exec`` are stubbed."""

import json

import pytest
import torch
from tiny_models import save_tiny_checkpoint

from minitron_deploy.bench import api
from minitron_deploy.bench.limits import Limits
from minitron_deploy.cli import build_parser, main
from minitron_deploy.core import precision
from minitron_deploy.serve import server, vllm_env

#: Probe timings (seconds of one matmul) and the dtype ``auto`` must resolve to on a CPU.
PROBES = [({"fp32_s": 0.010, "bf16_s": 0.004}, "bf16", "bfloat16"),  # AMX-like
          ({"fp32_s": 0.010, "bf16_s": 0.9}, "fp32", "float32")]  # AVX2 alone


@pytest.fixture
def probe(request, monkeypatch, tmp_path):
    """A CPU-only machine whose precision probe measures ``request.param``'s timings."""
    timings, dtype, vllm_dtype = request.param
    monkeypatch.delenv(precision.ENV_OVERRIDE, raising=False)
    monkeypatch.setattr(precision, "cache_path", lambda: tmp_path / "precision.json")
    monkeypatch.setattr(precision, "probe_matmuls", lambda: timings)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    precision._cpu_precision.cache_clear()
    yield dtype, vllm_dtype
    precision._cpu_precision.cache_clear()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("dtype") / "tiny"
    save_tiny_checkpoint("llama", path, num_hidden_layers=1)
    return path


@pytest.mark.parametrize("command", [["bench", "--models", "m", "--out", "o"],
                                     ["serve", "--model", "m"]])
def test_dtype_defaults_to_auto(command):
    assert build_parser().parse_args(command).dtype == "auto"


@pytest.mark.parametrize("probe", PROBES, indirect=True)
def test_bench_resolves_auto_and_hands_vllm_that_dtype(probe, checkpoint, tmp_path,
                                                       monkeypatch):
    dtype, vllm_dtype = probe
    jobs = []

    def fake_runner(models, threads=None, timeout=None):
        jobs.extend(models)
        run = {"batch": 1, "osl": 2, "ttft_s": 0.1, "e2e_s": 0.2, "output_tokens": 2}
        return {"vllm": "stub", "device": "cpu", "models": [{"throughput": {"1": [run]}}]}

    monkeypatch.setattr(vllm_env, "vllm_python", lambda: "python")
    monkeypatch.setattr(vllm_env, "run_vllm", fake_runner)
    monkeypatch.setattr(api, "measure_limits", lambda device, dtype: Limits(1e10, 1e11))
    out = tmp_path / "out"
    assert main(["bench", "--models", str(checkpoint), "--backend", "vllm", "--isl", "4",
                 "--osl", "2", "--batch-sizes", "1", "--reps", "1", "--warmup", "0",
                 "--device", "cpu", "--no-plots", "--out", str(out)]) == 0
    assert [job["dtype"] for job in jobs] == [vllm_dtype]
    settings = json.loads((out / "bench.json").read_text())["settings"]
    assert settings["dtype"] == dtype and settings["dtype_requested"] == "auto"
    assert f"OSL 2, {dtype}," in (out / "bench.md").read_text()


@pytest.mark.parametrize("probe", PROBES, indirect=True)
def test_serve_resolves_auto_and_hands_vllm_that_dtype(probe, checkpoint, monkeypatch, capsys):
    dtype, vllm_dtype = probe
    execs = []
    monkeypatch.setattr(server, "vllm_python", lambda: "python")
    monkeypatch.setattr(server.os, "execve", lambda path, cmd, env: execs.append(cmd))
    assert main(["serve", "--model", str(checkpoint), "--port", "0"]) == 0
    (cmd,) = execs
    assert cmd[cmd.index("--dtype") + 1] == vllm_dtype
    assert f"as 'tiny', in {dtype} at" in capsys.readouterr().out
