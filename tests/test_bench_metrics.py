"""Metric arithmetic on synthetic timings, hardware limits, report tables, trtllm glue."""

import pytest

from minitron_deploy.bench.limits import (
    Limits,
    ModelCost,
    decode_step_bytes,
    prefill_flops,
)
from minitron_deploy.bench.metrics import Timing, median_metrics, metrics_of
from minitron_deploy.bench.models import ModelSpec, model_config
from minitron_deploy.bench.report import add_speedups, markdown
from minitron_deploy.bench.trtllm import (
    check_available,
    parse_report,
    throughput_command,
)
from minitron_deploy.core.errors import MinitronError


def test_metrics_of_one_timing():
    m = metrics_of(Timing(batch=4, osl=11, ttft_s=0.5, e2e_s=1.5, output_tokens=44))
    assert m.output_tok_s == pytest.approx(44 / 1.5)
    assert m.requests_s == pytest.approx(4 / 1.5)
    assert m.ttft_ms == pytest.approx(500)
    assert m.itl_ms == pytest.approx(100)  # (1.5 - 0.5) s over 10 gaps
    assert m.per_user_tok_s == pytest.approx(10)


def test_median_is_taken_per_metric():
    timings = [Timing(2, 5, ttft, e2e, 10) for ttft, e2e in [(0.1, 1.0), (0.3, 2.0), (0.2, 9.0)]]
    m = median_metrics(timings)
    assert m.ttft_ms == pytest.approx(200) and m.e2e_s == pytest.approx(2.0)
    assert m.output_tok_s == pytest.approx(10 / 2.0)


@pytest.mark.parametrize("timing", [Timing(2, 5, 0.1, 1.0, 9), Timing(2, 5, 1.5, 1.0, 10),
                                    Timing(2, 5, 0.0, 1.0, 10)])
def test_inconsistent_timings_are_refused(timing):
    with pytest.raises(AssertionError):
        metrics_of(timing)


def test_llama31_8b_limits():
    cost = ModelCost.of(model_config(ModelSpec("llama31-8b")))
    assert cost.params == 8_030_261_248
    assert cost.streamed_params == cost.params - 128256 * 4096  # embedding rows read, not the table
    assert cost.kv_per_token == 2 * 32 * 8 * 128
    limits = Limits(bandwidth=3.0e12, peak_flops=800e12)
    # batch 1 is memory bound: ~15 GB per step at 3 TB/s is ~199 tok/s
    step = decode_step_bytes(cost, 1, 576, 2)
    assert step == 2 * (cost.streamed_params + 576 * cost.kv_per_token)
    assert limits.decode_step_s(cost, 1, 576, 2) == pytest.approx(step / 3.0e12)
    report = limits.report(cost, 1, 512, 128, 2, itl_s=2 * step / 3.0e12, ttft_s=1.0, e2e_s=10.0)
    assert report["decode_bound"] == "memory" and report["decode_fraction"] == pytest.approx(0.5)
    assert report["prefill_fraction"] == pytest.approx(prefill_flops(cost, 1, 512) / 800e12)
    # thousands of short sequences per step make it compute bound (long ones: KV-read bound)
    assert limits.report(cost, 4096, 16, 2, 2, None, 1.0, 10.0)["decode_bound"] == "compute"
    assert limits.report(cost, 4096, 512, 128, 2, None, 1.0, 10.0)["decode_bound"] == "memory"


def _run(model, batch, tok_s):
    return {"model": model, "backend": "torch", "batch": batch,
            "metrics": {"output_tok_s": tok_s, "requests_s": 1.0, "ttft_ms": 10.0,
                        "itl_ms": 5.0, "per_user_tok_s": 200.0, "e2e_s": 1.0}}


def _report(runs, max_throughput=False, bandwidth=3e12, flops=8e14):
    return {"settings": {"isl": 512, "osl": 128, "dtype": "bf16", "reps": 3, "warmup": 1,
                         "max_throughput": max_throughput},
            "machine": {"device": "cpu", "torch": "2", "transformers": "5"},
            "limits": {"copy_bandwidth_bytes_s": bandwidth, "matmul_flops_s": flops},
            "runs": runs}


def test_speedups_and_markdown():
    report = _report([_run("8b", 32, 100.0), _run("8b", 64, 120.0), _run("4b", 32, 250.0),
                      _run("4b", 64, 300.0)], max_throughput=True)
    add_speedups(report)
    assert [r["speedup_vs_first"] for r in report["runs"]] == [1.0, 1.0, 2.5, 2.5]
    best = {b["model"]: b for b in report["max_throughput"]}
    assert best["4b"]["batch"] == 64 and best["4b"]["speedup_vs_first"] == pytest.approx(2.5)
    table = markdown(report)
    assert "| 4b | torch | 64 | 300.0 | 2.50 |" in table.split("Max throughput")[1]
    assert table.count("\n| 8b |") == 3  # two batch sizes, then the best one


@pytest.mark.parametrize("max_throughput", [False, True])
def test_each_models_rows_appear_once_per_table(max_throughput):
    report = _report([_run("8b", 32, 100.0), _run("4b", 64, 300.0)], max_throughput)
    add_speedups(report)
    tables = markdown(report).split("Max throughput")
    assert len(tables) == (2 if max_throughput else 1)  # the best-batch table only when asked
    for table in tables:
        assert table.count("\n| 8b | torch | 32 |") == 1
        assert table.count("\n| 4b | torch | 64 |") == 1


@pytest.mark.parametrize("bandwidth, flops, expected", [
    (2.5e10, 4e10, "copy bandwidth 25 GB/s, matmul 40 GFLOP/s (bf16)"),
    (2.93e12, 7.73e14, "copy bandwidth 2.93 TB/s, matmul 773 TFLOP/s (bf16)")])
def test_machine_limits_keep_their_digits(bandwidth, flops, expected):
    report = _report([_run("8b", 1, 10.0)], bandwidth=bandwidth, flops=flops)
    add_speedups(report)
    assert expected in markdown(report)


def test_trtllm_backend_glue(tmp_path):
    try:
        import tensorrt_llm  # noqa: F401
    except ImportError:
        with pytest.raises(MinitronError, match="containers/"):
            check_available()
    cmd = throughput_command(tmp_path, tmp_path / "d.jsonl", tmp_path / "r.json", batch=32,
                             reps=3, warmup=1)
    assert cmd[cmd.index("--concurrency") + 1] == "32" and "--engine_dir" not in cmd
    (tmp_path / "config.json").write_text('{"build_config": {}}')
    assert "--engine_dir" in throughput_command(tmp_path, tmp_path / "d", tmp_path / "r", 1, 1, 0)
    report = {"performance": {"system_output_throughput_tok_s": 4096.0,
                              "request_throughput_req_s": 32.0, "total_latency_ms": 4000.0},
              "streaming_metrics": {"avg_ttft_ms": 300.0, "avg_tpot_ms": 8.0,
                                    "token_output_speed_tok_s": 125.0}}
    m = parse_report(report, 32)
    assert m["output_tok_s"] == 4096.0 and m["itl_ms"] == 8.0 and m["e2e_s"] == 4.0
    with pytest.raises(MinitronError, match="unknown format"):
        parse_report({"performance": {}}, 1)
