"""``minitron bench`` end to end on CPU with tiny checkpoints, and its refusals of bad input."""

import json

import pytest
from tiny_models import save_tiny_checkpoint

from minitron_deploy.cli import main


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    save_tiny_checkpoint("llama", root / "deep", num_hidden_layers=8)
    save_tiny_checkpoint("llama", root / "shallow", num_hidden_layers=1)
    return root


def test_cpu_bench_of_two_models_writes_a_complete_report(checkpoints, capsys):
    out = checkpoints / "report"
    rc = main(["bench", "--models", str(checkpoints / "deep"), str(checkpoints / "shallow"),
               "--backend", "torch,hf", "--isl", "8", "--osl", "12", "--batch-sizes", "1,3",
               "--reps", "3", "--dtype", "fp32", "--device", "cpu", "--out", str(out)])
    assert rc == 0
    report = json.loads((out / "bench.json").read_text())
    assert {(r["model"], r["backend"], r["batch"]) for r in report["runs"]} == {
        (m, b, n) for m in ("deep", "shallow") for b in ("torch", "hf") for n in (1, 3)}
    for run in report["runs"]:
        reps = run["repetitions"]
        assert len(reps) == 3
        assert all(t["output_tokens"] == run["batch"] * 12 for t in reps)
        assert all(0 < t["ttft_s"] < t["e2e_s"] for t in reps)
        m = run["metrics"]
        assert m["output_tok_s"] == pytest.approx(run["batch"] * 12 / m["e2e_s"], rel=0.5)
        assert m["itl_ms"] > 0 and m["per_user_tok_s"] == pytest.approx(1e3 / m["itl_ms"], rel=0.5)
        assert 0 < run["limits"]["decode_fraction"] and run["limits"]["decode_bound"] == "memory"
    # speedups are throughput ratios to the first model at the same backend and batch (how
    # fast each one is belongs to benchmarks/, not to a unit test on a shared CPU)
    deep = {(r["backend"], r["batch"]): r["metrics"]["output_tok_s"]
            for r in report["runs"] if r["model"] == "deep"}
    for run in report["runs"]:
        expected = run["metrics"]["output_tok_s"] / deep[(run["backend"], run["batch"])]
        assert run["speedup_vs_first"] == pytest.approx(expected)
    assert report["limits"]["copy_bandwidth_bytes_s"] > 0 and report["machine"]["torch"]
    assert report["meta"]["command"].startswith("minitron bench --models")
    table = (out / "bench.md").read_text()
    assert table.count("| shallow |") == 4 and "Max throughput" not in table  # not asked for
    assert (out / "throughput_vs_batch.png").stat().st_size > 0
    assert (out / "speedup.png").stat().st_size > 0
    assert "| deep | torch | 1 |" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--models", "llama31-70b"], "unknown model 'llama31-70b'"),
    (["--models", "llama31-8b", "--batch-sizes", "4096"],
     "llama31-8b at batch 4096 .* needs ~.* GiB .* lower --batch-sizes"),
    (["--models", "llama31-8b", "--backend", "tgi"], "unknown backend 'tgi'"),
    (["--models", "llama31-8b", "--backend", "vllm"], "vllm backend needs checkpoint directories"),
    (["--models", "llama31-8b", "--batch-sizes", "1,x"], "batch sizes must be integers"),
])
def test_bad_input_is_one_clean_line(tmp_path, capsys, argv, message):
    rc = main(["bench", *argv, "--device", "cpu", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("minitron: error: ") and err.count("\n") == 1
    assert pytest.importorskip("re").search(message, err)
    assert not (tmp_path / "out").exists()  # refused before anything ran


def test_trtllm_backend_outside_its_container_points_there(checkpoints, capsys):
    pytest.importorskip("shutil").which("trtllm-bench") and pytest.skip("TensorRT-LLM present")
    rc = main(["bench", "--models", str(checkpoints / "shallow"), "--backend", "trtllm",
               "--device", "cpu", "--out", str(checkpoints / "trt")])
    assert rc == 2 and "containers/" in capsys.readouterr().err
