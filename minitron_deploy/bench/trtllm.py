"""The ``trtllm`` backend: drives ``trtllm-bench`` (TensorRT-LLM's own benchmark) per batch size.

A fixed-length synthetic dataset (``prepare-dataset token-norm-dist`` with zero deviation)
is made once per model, then ``throughput`` runs with concurrency and max batch size equal to
the batch size. A checkpoint directory runs on TensorRT-LLM's PyTorch backend (1.x default);
a directory holding a built engine (``config.json`` with ``build_config``, <= 1.2.x) runs
``--engine_dir`` with the TensorRT backend. Only inside the TensorRT-LLM container.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..core.errors import MinitronError

_MISSING = ("the trtllm backend needs TensorRT-LLM (tensorrt_llm and the trtllm-bench command), "
            "which installs only from NVIDIA's container: run inside "
            "nvcr.io/nvidia/tensorrt-llm/release (see containers/ in the repository)")


def check_available() -> None:
    if importlib.util.find_spec("tensorrt_llm") is None or shutil.which("trtllm-bench") is None:
        raise MinitronError(_MISSING)


def is_engine_dir(path: Path) -> bool:
    config = path / "config.json"
    return config.is_file() and "build_config" in json.loads(config.read_text())


def prepare_command(model_dir: Path, dataset: Path, requests: int, isl: int, osl: int) -> list[str]:
    return ["trtllm-bench", "--model", str(model_dir), "--model_path", str(model_dir),
            "prepare-dataset", "--output", str(dataset), "token-norm-dist",
            "--num-requests", str(requests), "--input-mean", str(isl), "--input-stdev", "0",
            "--output-mean", str(osl), "--output-stdev", "0"]


def throughput_command(model_dir: Path, dataset: Path, report: Path, batch: int, reps: int,
                       warmup: int, tokenizer_dir: Path | None = None) -> list[str]:
    source = tokenizer_dir or model_dir
    cmd = ["trtllm-bench", "--model", str(source), "--model_path", str(source), "throughput",
           "--dataset", str(dataset), "--num_requests", str(batch * reps),
           "--warmup", str(batch * warmup), "--concurrency", str(batch),
           "--max_batch_size", str(batch), "--streaming", "--report_json", str(report)]
    if is_engine_dir(model_dir):
        cmd += ["--backend", "tensorrt", "--engine_dir", str(model_dir)]
    return cmd


def parse_report(report: dict, batch: int) -> dict:
    """trtllm-bench's ``--report_json`` in our metric names (keys of 0.2x and 1.x accepted)."""
    perf = report.get("performance", {})
    streaming = report.get("streaming_metrics", {})

    def pick(section, *keys):
        return next((section[k] for k in keys if section.get(k) is not None), None)

    out_tok_s = pick(perf, "system_output_throughput_tok_s", "output_throughput_tok_s")
    if out_tok_s is None:
        raise MinitronError("trtllm-bench report has no output throughput (unknown format)")
    tpot = pick(streaming, "avg_tpot_ms")
    return {"output_tok_s": out_tok_s,
            "requests_s": pick(perf, "request_throughput_req_s"),
            "ttft_ms": pick(streaming, "avg_ttft_ms"), "itl_ms": tpot,
            "per_user_tok_s": pick(streaming, "token_output_speed_tok_s")
            or (1e3 / tpot if tpot else None),
            "e2e_s": (pick(perf, "total_latency_ms") or 0) / 1e3 or None,
            "concurrency": batch}


def run_trtllm(spec, config, settings, progress) -> list[dict]:
    """One record per batch size, each from its own ``trtllm-bench throughput`` run."""
    model_dir = Path(spec.name)
    if spec.is_named or not model_dir.is_dir():
        raise MinitronError(f"the trtllm backend needs a checkpoint or engine directory with a "
                            f"tokenizer, not the named shape {spec.name!r}; export one first")
    batches = settings.batches_for(spec)
    runs = []
    with tempfile.TemporaryDirectory(prefix="minitron-trtllm-") as tmp:
        dataset = Path(tmp) / "dataset.jsonl"
        requests = max(batches) * (settings.reps + settings.warmup)
        _call(prepare_command(model_dir, dataset, requests, settings.isl, settings.osl))
        for batch in batches:
            progress(f"{spec.label} [trtllm] batch {batch}")
            report = Path(tmp) / f"report-{batch}.json"
            _call(throughput_command(model_dir, dataset, report, batch, settings.reps,
                                     settings.warmup))
            runs.append({"model": spec.label, "backend": "trtllm", "batch": batch,
                         "isl": settings.isl, "osl": settings.osl,
                         "metrics": parse_report(json.loads(report.read_text()), batch),
                         "trtllm_report": json.loads(report.read_text())})
    return runs


def _call(cmd: list[str]) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or [""]
        raise MinitronError(f"{' '.join(cmd[:4])} ... failed (exit {result.returncode}): {tail[0]}")
