"""vLLM as a deployment target, on CPU: pruned tiny models give transformers' greedy tokens,
``minitron serve`` answers the OpenAI client on loopback, and ``bench --backend vllm`` reports
beside torch and hf. Skips, saying why, when the vLLM environment (.ci/setup) is absent."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from tiny_models import FAMILIES, char_tokenizer, tiny_config
from transformers import AutoModelForCausalLM

from minitron_deploy.cli import main
from minitron_deploy.core.errors import MinitronError
from minitron_deploy.core.shape import ModelShape
from minitron_deploy.pruning.trim import KeepPlan, trim_model
from minitron_deploy.serve.parity import greedy_parity
from minitron_deploy.serve.vllm_env import vllm_python

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("width", "depth", "gqa")
TEXTS = ["The quick brown fox", "Pruned models serve", "a"]
NEW_TOKENS = 16
CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"


@pytest.fixture(scope="module")
def vllm_env() -> str:
    try:
        return vllm_python()
    except MinitronError as exc:
        log = REPO / ".venv-vllm.log"
        lines = log.read_text().strip().splitlines() if log.is_file() else []
        why = [line for line in lines if line.startswith("ERROR")][-1:] or lines[-1:]
        pytest.skip(f"{exc}" + (f" (.venv-vllm.log: {why[0]})" if why else ""))


def vllm_tiny_model(family: str, seed: int = 0):
    """A tiny model of ``family`` that vLLM's CPU attention takes (head_dim >= 32): hidden 192,
    6 query heads over 2 KV groups of head_dim 32; norms and biases randomized."""
    config = tiny_config(family, hidden_size=192)
    config.head_dim = 32
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def pruned(model, variant: str):
    """Width: hidden 192 -> 144 and MLP 80 -> 40 (seeded subsets); depth: layer 2 dropped;
    gqa: one KV group and its 3 query heads kept."""
    plan = KeepPlan.keep_all(ModelShape.from_config(model.config))
    if variant == "width":
        g = torch.Generator().manual_seed(1)
        plan.hidden = torch.randperm(192, generator=g)[:144].sort().values
        plan.mlp = {i: torch.randperm(80, generator=g)[:40].sort().values for i in plan.layers}
    elif variant == "depth":
        plan.layers = [0, 1, 3]
    else:
        plan.heads = {i: torch.tensor([3, 4, 5]) for i in plan.layers}
        plan.kv_heads = {i: torch.tensor([1]) for i in plan.layers}
    return trim_model(model, plan)


def save(model, path: Path, chat_template: bool = False) -> Path:
    model.save_pretrained(str(path))
    tokenizer = char_tokenizer()
    if chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(str(path))
    return path


def build_models(root: Path) -> dict[tuple[str, str], Path]:
    """Every tiny family, pruned each way, as stock checkpoints under ``root``."""
    return {(f, v): save(pruned(vllm_tiny_model(f), v), root / f"{f}-{v}")
            for f in FAMILIES for v in VARIANTS}


def prompts() -> list[list[int]]:
    return [char_tokenizer()(t)["input_ids"] for t in TEXTS]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def parity(vllm_env, tmp_path_factory):
    """Every pruned model (each family x variant) through transformers and one vLLM engine
    process."""
    dirs = build_models(tmp_path_factory.mktemp("vllm-parity"))
    results, failed, engine = greedy_parity([str(d) for d in dirs.values()], prompts(),
                                            NEW_TOKENS, threads=1)
    return dirs, results, failed, engine


@pytest.mark.parametrize("family", FAMILIES)
def test_pruned_models_give_transformers_greedy_tokens(parity, family):
    dirs, results, failed, engine = parity
    assert engine["device"] == "cpu"
    for variant in VARIANTS:
        model = str(dirs[family, variant])
        assert model not in failed, f"vLLM could not run {family}-{variant}: {failed.get(model)}"
        mine = [p for p in results if p.model == model]
        assert len(mine) == len(TEXTS) and all(len(p.hf_tokens) == NEW_TOKENS for p in mine)
        assert [p.vllm_tokens for p in mine] == [p.hf_tokens for p in mine], f"{family}-{variant}"
        # fp32 on both sides: the chosen tokens' logprobs agree to float rounding
        assert max(p.max_logprob_gap for p in mine) < 1e-5


def test_bench_reports_vllm_beside_torch_and_hf(vllm_env, tmp_path):
    model = save(pruned(vllm_tiny_model("qwen2"), "width"), tmp_path / "qwen2-width")
    out = tmp_path / "report"
    rc = main(["bench", "--models", str(model), "--backend", "torch,hf,vllm", "--isl", "8",
               "--osl", "6", "--batch-sizes", "1,3", "--reps", "2", "--dtype", "fp32",
               "--device", "cpu", "--no-plots", "--out", str(out)])
    assert rc == 0
    report = json.loads((out / "bench.json").read_text())
    assert {(r["backend"], r["batch"]) for r in report["runs"]} == {
        (b, n) for b in ("torch", "hf", "vllm") for n in (1, 3)}
    for run in report["runs"]:
        assert all(t["output_tokens"] == run["batch"] * 6 for t in run["repetitions"])
        assert all(0 < t["ttft_s"] <= t["e2e_s"] for t in run["repetitions"])
        assert run["metrics"]["itl_ms"] > 0 and run["limits"]["decode_fraction"] > 0
    engines = [r["engine"] for r in report["runs"] if r["backend"] == "vllm"]
    assert engines and all(e["device"] == "cpu" and e["vllm"] for e in engines)
    assert "| qwen2-width | vllm | 3 |" in (out / "bench.md").read_text()


def test_bench_vllm_refuses_named_shapes_before_running(vllm_env, tmp_path, capsys):
    rc = main(["bench", "--models", "llama31-8b", "--backend", "torch,vllm", "--device", "cpu",
               "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "needs checkpoint directories" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def _wait_healthy(url: str, server: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, "the server exited before it was ready"
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    pytest.fail(f"no healthy server at {url} within {timeout:.0f} s")


_CLIENT = """
import json, sys
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1], api_key="unused")
name = client.models.list().data[0].id
done = client.completions.create(model=name, prompt=sys.argv[2], max_tokens=8, temperature=0,
                                 extra_body={"return_token_ids": True})
chat = client.chat.completions.create(model=name, max_tokens=4, temperature=0,
                                      messages=[{"role": "user", "content": "hi"}])
print(json.dumps({"name": name, "tokens": done.choices[0].model_dump()["token_ids"],
                  "chat": chat.choices[0].message.content}))
"""


def test_serve_answers_the_openai_client_on_loopback(vllm_env, tmp_path):
    model = vllm_tiny_model("llama")
    path = save(model, tmp_path / "tiny-llama", chat_template=True)
    port = free_port()
    log = tmp_path / "server.log"
    with log.open("w") as sink:
        server = subprocess.Popen(
            [sys.executable, "-m", "minitron_deploy.cli", "serve", "--model", str(path),
             "--port", str(port), "--dtype", "fp32", "--max-model-len", "128",
             "--cpu-kv-cache-gib", "1"], stdout=sink, stderr=subprocess.STDOUT,
            env={**os.environ, "VLLM_LOGGING_LEVEL": "WARNING", "OMP_NUM_THREADS": "1",
                 "VLLM_CPU_OMP_THREADS_BIND": "nobind"})
    url = f"http://127.0.0.1:{port}/v1"
    try:
        _wait_healthy(f"http://127.0.0.1:{port}", server, timeout=240)
        reply = subprocess.run([vllm_env, "-c", _CLIENT, url, TEXTS[0]], capture_output=True,
                               text=True, timeout=60)
        assert reply.returncode == 0, reply.stderr[-2000:]
        answer = json.loads(reply.stdout)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    printed = log.read_text()
    assert f"at {url}" in printed and f"curl {url}/chat/completions" in printed
    assert answer["name"] == "tiny-llama" and answer["chat"]
    ids = char_tokenizer()(TEXTS[0], return_tensors="pt")["input_ids"]
    expected = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert answer["tokens"] == expected[0, ids.shape[1]:].tolist()


def test_serve_refuses_a_folder_that_is_not_a_model(tmp_path, capsys):
    rc = main(["serve", "--model", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "not a Hugging Face checkpoint" in err and err.count("\n") == 1


def test_serve_refuses_a_port_in_use(tmp_path, capsys):
    path = save(vllm_tiny_model("llama"), tmp_path / "m")
    capsys.readouterr()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        rc = main(["serve", "--model", str(path), "--port", str(busy.getsockname()[1])])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot listen on 127.0.0.1:" in err and err.count("\n") == 1


def test_missing_vllm_environment_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MINITRON_VLLM_PYTHON", str(tmp_path / "nowhere" / "python"))
    path = save(vllm_tiny_model("llama"), tmp_path / "m")
    capsys.readouterr()
    rc = main(["bench", "--models", str(path), "--backend", "vllm", "--device", "cpu",
               "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "MINITRON_VLLM_PYTHON" in err and err.count("\n") == 1
