"""``precision: auto``: the decision from an injected probe result, its per-machine cache, and
the explicit and CUDA cases. No timing is measured or asserted."""

import json

import pytest
import torch

from minitron_deploy.core import precision
from minitron_deploy.core.errors import MinitronError
from minitron_deploy.core.precision import cpu_precision, resolve_precision
from minitron_deploy.distill.objectives import uses_bf16


def _probe(fp32_s, bf16_s):
    calls = []

    def probe():
        calls.append(1)
        return {"fp32_s": fp32_s, "bf16_s": bf16_s}
    return probe, calls


@pytest.mark.parametrize("fp32_s, bf16_s, expected", [
    (0.010, 0.004, "bf16"),  # AMX-like: bf16 faster
    (0.010, 4.5, "fp32"),  # AVX2: bf16 far slower
    (0.010, 0.009, "fp32"),  # barely faster: not worth the casts
    (0.010, None, "fp32"),  # the probe stopped early
])
def test_decision_follows_the_probe(tmp_path, fp32_s, bf16_s, expected):
    probe, _ = _probe(fp32_s, bf16_s)
    assert cpu_precision(tmp_path / "precision.json", "cpu-a", probe) == expected
    stored = json.loads((tmp_path / "precision.json").read_text())
    assert stored["cpu-a"]["precision"] == expected


def test_cache_hit_does_not_probe_again(tmp_path):
    cache = tmp_path / "sub" / "precision.json"
    first, calls = _probe(0.010, 0.004)
    assert cpu_precision(cache, "cpu-a", first) == "bf16"
    assert len(calls) == 1

    def must_not_run():
        raise AssertionError("probed despite a cached answer")
    assert cpu_precision(cache, "cpu-a", must_not_run) == "bf16"
    other, calls = _probe(0.010, 4.5)  # another machine key probes and keeps both entries
    assert cpu_precision(cache, "cpu-b", other) == "fp32"
    assert len(calls) == 1
    assert set(json.loads(cache.read_text())) == {"cpu-a", "cpu-b"}


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"cpu-a": {"precision": "fp8"}}',
                                     '{"cpu-a": "bf16"}'])
def test_corrupt_cache_is_ignored(tmp_path, content):
    cache = tmp_path / "precision.json"
    cache.write_text(content)
    probe, calls = _probe(0.010, 0.004)
    assert cpu_precision(cache, "cpu-a", probe) == "bf16"
    assert len(calls) == 1
    assert json.loads(cache.read_text())["cpu-a"]["precision"] == "bf16"


def test_unwritable_cache_still_answers(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    probe, _ = _probe(0.010, 0.004)
    assert cpu_precision(blocker / "precision.json", "cpu-a", probe) == "bf16"


def test_explicit_precisions_pass_through():
    for requested in ("bf16", "fp32", "fp16"):
        assert resolve_precision("cpu", requested) == requested
    assert uses_bf16(torch.device("cpu"), "bf16")
    assert not uses_bf16(torch.device("cpu"), "fp32")


def test_cuda_auto_follows_bf16_support(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("cuda:0", "auto") == "bf16"
    assert uses_bf16(torch.device("cuda"), "auto")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision(torch.device("cuda"), "auto") == "fp32"


def test_cpu_auto_uses_override_then_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "cache_path", lambda: tmp_path / "precision.json")
    monkeypatch.setattr(precision, "probe_matmuls", lambda: {"fp32_s": 0.01, "bf16_s": 0.004})
    precision._cpu_precision.cache_clear()
    try:
        monkeypatch.setenv(precision.ENV_OVERRIDE, "fp32")
        assert resolve_precision("cpu", "auto") == "fp32"
        precision._cpu_precision.cache_clear()
        monkeypatch.delenv(precision.ENV_OVERRIDE)
        assert resolve_precision("cpu", "auto") == "bf16"
        assert uses_bf16(torch.device("cpu"), "auto")
        key = precision.machine_key()
        assert torch.__version__ in key
        assert json.loads((tmp_path / "precision.json").read_text())[key]["precision"] == "bf16"
        precision._cpu_precision.cache_clear()
        monkeypatch.setenv(precision.ENV_OVERRIDE, "fp8")
        with pytest.raises(MinitronError, match="bf16 or fp32"):
            resolve_precision("cpu", "auto")
    finally:
        precision._cpu_precision.cache_clear()
