"""Reliability suite: a catalogue of bad inputs across every subcommand (each refused with one
line, a non-zero exit, no partial output and the input untouched), SIGKILL at seeded random
points followed by a re-run (distill --resume, prune, export), and a full disk during export."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from minitron_deploy.cli import main
from tiny_models import CALIB_TEXT, save_tiny_checkpoint

REPO = Path(__file__).resolve().parents[1]
CALIB = ["--calib-samples", "8", "--seq-len", "32", "--batch-size", "4"]
DISTILL = ["--steps", "2", "--seq-len", "32", "--batch-size", "2", "--checkpoint-every", "1"]


# --------------------------------------------------------------------------- inputs


def _copy_model(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Every input of the catalogue, under one root hashed before and after each case."""
    root = tmp_path_factory.mktemp("inputs")
    good = root / "good"
    save_tiny_checkpoint("llama", good)
    save_tiny_checkpoint("llama", root / "student", seed=1, num_hidden_layers=2)
    save_tiny_checkpoint("llama", root / "other-vocab", vocab_size=120)
    (root / "calib.txt").write_text(CALIB_TEXT)
    (root / "empty.txt").write_text("\n  \n\n")
    (root / "binary.txt").write_bytes(bytes(random.Random(0).randrange(256) for _ in range(4096)))
    (root / "blocker").write_text("a regular file where a directory is expected\n")

    weights = (good / "model.safetensors").read_bytes()
    _copy_model(good, root / "truncated")
    (root / "truncated" / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    _copy_model(good, root / "garbage")
    (root / "garbage" / "model.safetensors").write_bytes(
        bytes(random.Random(1).randrange(256) for _ in range(len(weights))))
    _copy_model(good, root / "no-weights")
    (root / "no-weights" / "model.safetensors").unlink()
    _copy_model(good, root / "bad-tokenizer")
    (root / "bad-tokenizer" / "tokenizer.json").write_bytes(b"\x89PNG\x00\xffnot a tokenizer")

    _copy_model(good, root / "nan")
    tensors = load_file(str(root / "nan" / "model.safetensors"))
    name = next(k for k in tensors if "layers.1.mlp.up_proj" in k)
    tensors[name][0, :] = float("nan")
    save_file(tensors, str(root / "nan" / "model.safetensors"), metadata={"format": "pt"})

    (root / "gpt2").mkdir()
    from transformers import GPT2Config
    GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=97).save_pretrained(root / "gpt2")

    remote = root / "remote"
    remote.mkdir()
    (remote / "config.json").write_text(json.dumps({
        "model_type": "minitron_custom_arch", "architectures": ["CustomForCausalLM"],
        "auto_map": {"AutoConfig": "custom_code.CustomConfig",
                     "AutoModelForCausalLM": "custom_code.CustomForCausalLM"},
        "hidden_size": 48, "num_hidden_layers": 2, "vocab_size": 97}))
    # Running this file would leave a marker beside it: the suite checks it never appears.
    (remote / "custom_code.py").write_text(
        "from pathlib import Path\n(Path(__file__).parent / 'EXECUTED').write_text('pwned')\n")

    (root / "bad-recipe.yaml").write_text(
        "name: bad\nteacher: good\ndata: calib.txt\nheldout: calib.txt\n"
        "prune: {target_params: 0.5, bogus_key: 1}\n")
    return root


def _tree(root: Path) -> dict[str, str]:
    """Relative path -> sha256 (directories as 'dir') of everything under ``root``."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _run_main(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse refusals
        return int(exc.code)


# --------------------------------------------------------------------------- catalogue

I, O = "{in}", "{out}"  # placeholders: the inputs root and this case's output directory

CASES = {
    # missing / corrupt / truncated weights
    "prune-missing-model": (["prune", "--model", f"{I}/nope", "--calib", f"{I}/calib.txt",
                             "--out", O, "--ffn-hidden-size", "40", *CALIB], "does not exist"),
    "prune-truncated-weights": (["prune", "--model", f"{I}/truncated", "--calib",
                                 f"{I}/calib.txt", "--out", O, "--ffn-hidden-size", "40", *CALIB],
                                "cannot load weights"),
    "prune-garbage-weights": (["prune", "--model", f"{I}/garbage", "--calib", f"{I}/calib.txt",
                               "--out", O, "--ffn-hidden-size", "40", *CALIB],
                              "cannot load weights"),
    "export-truncated-weights": (["export", "--model", f"{I}/truncated", "--format", "trtllm",
                                  "--out", O], "cannot load weights"),
    "eval-missing-weights": (["eval", "--model", f"{I}/no-weights", "--tasks", "ppl",
                              "--ppl-data", f"{I}/calib.txt", "--seq-len", "32", "--ppl-seqs",
                              "2", "--out", f"{O}/r.json"], "cannot load weights"),
    "score-garbage-weights": (["score", "--model", f"{I}/garbage", "--calib", f"{I}/calib.txt",
                               "--out", f"{O}/s.safetensors", *CALIB], "cannot load weights"),
    # wrong tokenizer
    "distill-vocab-mismatch": (["distill", "--teacher", f"{I}/other-vocab", "--student",
                                f"{I}/student", "--data", f"{I}/calib.txt", "--out", O, *DISTILL],
                               "vocabulary"),
    "prune-garbage-tokenizer": (["prune", "--model", f"{I}/bad-tokenizer", "--calib",
                                 f"{I}/calib.txt", "--out", O, "--ffn-hidden-size", "40", *CALIB],
                                "tokenizer"),
    # unsupported family / remote code
    "prune-gpt2": (["prune", "--model", f"{I}/gpt2", "--calib", f"{I}/calib.txt", "--out", O,
                    "--ffn-hidden-size", "8", *CALIB], "unsupported architecture 'gpt2'"),
    "export-gpt2": (["export", "--model", f"{I}/gpt2", "--format", "hf", "--out", O],
                    "unsupported architecture 'gpt2'"),
    "prune-remote-code": (["prune", "--model", f"{I}/remote", "--calib", f"{I}/calib.txt",
                           "--out", O, "--ffn-hidden-size", "40", *CALIB], "trust_remote_code"),
    "eval-remote-code": (["eval", "--model", f"{I}/remote", "--tasks", "ppl", "--ppl-data",
                          f"{I}/calib.txt", "--out", f"{O}/r.json"], "trust_remote_code"),
    # impossible shapes
    "prune-hidden-too-large": (["prune", "--model", f"{I}/good", "--calib", f"{I}/calib.txt",
                                "--out", O, "--hidden-size", "96", *CALIB],
                               "larger than the source"),
    "prune-heads-vs-kv-groups": (["prune", "--model", f"{I}/good", "--calib", f"{I}/calib.txt",
                                  "--out", O, "--num-heads", "5", *CALIB], "5"),
    "prune-zero-layers": (["prune", "--model", f"{I}/good", "--calib", f"{I}/calib.txt",
                           "--out", O, "--num-layers", "0", *CALIB], "num_layers"),
    # empty / binary data
    "prune-empty-calib": (["prune", "--model", f"{I}/good", "--calib", f"{I}/empty.txt",
                           "--out", O, "--ffn-hidden-size", "40", *CALIB], "contains no text"),
    "prune-binary-calib": (["prune", "--model", f"{I}/good", "--calib", f"{I}/binary.txt",
                            "--out", O, "--ffn-hidden-size", "40", *CALIB], "binary.txt"),
    "distill-empty-data": (["distill", "--teacher", f"{I}/good", "--student", f"{I}/student",
                            "--data", f"{I}/empty.txt", "--out", O, *DISTILL],
                           "contains no text"),
    "eval-binary-ppl-data": (["eval", "--model", f"{I}/good", "--tasks", "ppl", "--ppl-data",
                              f"{I}/binary.txt", "--seq-len", "32", "--out", f"{O}/r.json"],
                             "binary.txt"),
    # NaN weights
    "prune-nan-weights": (["prune", "--model", f"{I}/nan", "--calib", f"{I}/calib.txt",
                           "--out", O, "--ffn-hidden-size", "40", *CALIB], "non-finite"),
    "eval-nan-weights": (["eval", "--model", f"{I}/nan", "--tasks", "ppl", "--ppl-data",
                          f"{I}/calib.txt", "--seq-len", "32", "--ppl-seqs", "2",
                          "--out", f"{O}/r.json"], "non-finite"),
    "export-nan-weights": (["export", "--model", f"{I}/nan", "--format", "trtllm", "--dtype",
                            "fp32", "--out", O], "non-finite"),
    "distill-nan-student": (["distill", "--teacher", f"{I}/good", "--student", f"{I}/nan",
                             "--data", f"{I}/calib.txt", "--out", O, *DISTILL], "non-finite"),
    # non-writable output (root ignores permissions: the parent is a regular file)
    "prune-out-under-file": (["prune", "--model", f"{I}/good", "--calib", f"{I}/calib.txt",
                              "--out", f"{I}/blocker/out", "--ffn-hidden-size", "40", *CALIB],
                             "cannot write to"),
    "eval-out-under-file": (["eval", "--model", f"{I}/good", "--tasks", "ppl", "--ppl-data",
                             f"{I}/calib.txt", "--seq-len", "32", "--ppl-seqs", "2",
                             "--out", f"{I}/blocker/r.json"], "cannot write to"),
    "distill-out-under-file": (["distill", "--teacher", f"{I}/good", "--student", f"{I}/student",
                                "--data", f"{I}/calib.txt", "--out", f"{I}/blocker/out",
                                *DISTILL], "cannot write to"),
    # output inside / equal to the input
    "prune-out-inside-input": (["prune", "--model", f"{I}/good", "--calib", f"{I}/calib.txt",
                                "--out", f"{I}/good/pruned", "--ffn-hidden-size", "40", *CALIB],
                               "inside the input model"),
    "export-out-inside-input": (["export", "--model", f"{I}/good", "--format", "hf",
                                 "--out", f"{I}/good/hf"], "inside the input model"),
    "distill-out-inside-student": (["distill", "--teacher", f"{I}/good", "--student",
                                    f"{I}/student", "--data", f"{I}/calib.txt",
                                    "--out", f"{I}/student/kd", *DISTILL],
                                   "inside the input model"),
    "eval-out-inside-input": (["eval", "--model", f"{I}/good", "--tasks", "ppl", "--ppl-data",
                               f"{I}/calib.txt", "--seq-len", "32", "--ppl-seqs", "2",
                               "--out", f"{I}/good/results.json"], "inside the input model"),
    "score-out-inside-input": (["score", "--model", f"{I}/good", "--calib", f"{I}/calib.txt",
                                "--out", f"{I}/good/importance.safetensors", *CALIB],
                               "inside the input model"),
    "prune-out-is-input": (["prune", "--model", f"{I}/good", "--calib", f"{I}/calib.txt",
                            "--out", f"{I}/good", "--ffn-hidden-size", "40", *CALIB],
                           "input model"),
    "distill-out-is-teacher": (["distill", "--teacher", f"{I}/good", "--student", f"{I}/student",
                                "--data", f"{I}/calib.txt", "--out", f"{I}/good", *DISTILL],
                               "teacher"),
    # unknown recipe keys, shapes, formats
    "demo-unknown-recipe-key": (["demo", "--recipe", f"{I}/bad-recipe.yaml", "--work-dir", O],
                                "bogus_key"),
    "bench-unknown-shape": (["bench", "--models", "llama99-1t", "--device", "cpu", "--out", O],
                            "unknown model 'llama99-1t'"),
    "export-unknown-format": (["export", "--model", f"{I}/good", "--format", "tflite",
                               "--out", O], "invalid choice: 'tflite'"),
    "build-engine-not-a-checkpoint": (["build-engine", "--checkpoint", f"{I}/calib.txt",
                                       "--out", O], "calib.txt"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_refused_cleanly(case, inputs, tmp_path, capsys):
    argv, message = CASES[case]
    out = tmp_path / "out"
    argv = [a.replace(I, str(inputs)).replace(O, str(out)) for a in argv]
    before_in, before_out = _tree(inputs), _tree(tmp_path)
    capsys.readouterr()

    rc = _run_main(argv)

    err = capsys.readouterr().err
    assert rc == 2, (case, rc, err[-2000:])
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("minitron: error:")]
    assert len(lines) == 1, err[-2000:]
    assert err.rstrip().splitlines()[-1] == lines[0]  # nothing printed after the reason
    assert message in lines[0], lines[0]
    assert not out.exists()
    assert _tree(tmp_path) == before_out  # no .tmp-* or .partial leftovers beside the output
    assert _tree(inputs) == before_in  # every input byte-for-byte unchanged, nothing added
    assert not (inputs / "remote" / "EXECUTED").exists()


# --------------------------------------------------------------------------- SIGKILL, re-run

SEED = 1234  # the kill points below are drawn from this seed


def _cli(*args: str, stderr=subprocess.DEVNULL) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "minitron_deploy.cli", *args], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=stderr)


def _wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 120.0) -> None:
    """Poll ``condition()`` every few ms until true; fail if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)


def _kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL


def _finish(proc: subprocess.Popen) -> None:
    assert proc.wait(timeout=300) == 0


@pytest.fixture(scope="module")
def kill_inputs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kill")
    save_tiny_checkpoint("llama", root / "teacher")
    save_tiny_checkpoint("llama", root / "student", seed=1, num_hidden_layers=2,
                         intermediate_size=40)
    save_tiny_checkpoint("llama", root / "medium", hidden_size=256, intermediate_size=1024,
                         num_attention_heads=8, num_key_value_heads=2)
    (root / "text.txt").write_text(CALIB_TEXT)
    return root


def _losses(out: Path) -> list[float]:
    text = (out / "minitron" / "train_log.jsonl").read_text()
    return [json.loads(line)["loss"] for line in text.split("\n") if line.strip()]


def test_distill_killed_then_resumed_equals_uninterrupted(kill_inputs, tmp_path):
    steps, every = 16, 2
    kill_at = random.Random(SEED).randint(every, 10)  # after the first checkpoint
    args = ["distill", "--teacher", str(kill_inputs / "teacher"), "--student",
            str(kill_inputs / "student"), "--data", str(kill_inputs / "text.txt"),
            "--steps", str(steps), "--seq-len", "32", "--batch-size", "2",
            "--lr", "3e-3", "--checkpoint-every", str(every)]
    ref, out = tmp_path / "ref", tmp_path / "run"
    reference = _cli(*args, "--out", str(ref))  # uninterrupted, alongside the killed run
    run = _cli(*args, "--out", str(out))
    log = tmp_path / ".run.partial" / "student" / "train_log.jsonl"
    _wait_for(lambda: log.is_file() and log.read_text().count("\n") >= kill_at, run,
              f"step {kill_at}")
    _kill(run)
    partial = tmp_path / ".run.partial" / "student"
    done = int((partial / (partial / "latest").read_text()).joinpath("state.json")
               .read_text().split(":")[1].split(",")[0])
    assert every <= done < steps and not out.exists()

    _finish(_cli(*args, "--out", str(out), "--resume"))
    _finish(reference)
    assert (out / "model.safetensors").read_bytes() == (ref / "model.safetensors").read_bytes()
    assert _losses(out) == _losses(ref) and len(_losses(out)) == steps
    assert not (tmp_path / ".run.partial").exists()


def test_prune_killed_mid_calibration_leaves_nothing_and_reruns_identically(kill_inputs,
                                                                            tmp_path):
    batches = 48
    kill_at = random.Random(SEED + 1).randint(1, batches // 2)
    args = ["prune", "--model", str(kill_inputs / "teacher"), "--calib",
            str(kill_inputs / "text.txt"), "--ffn-hidden-size", "40", "--num-heads", "4",
            "--calib-samples", str(batches), "--seq-len", "64", "--batch-size", "1"]
    ref, out = tmp_path / "ref", tmp_path / "run"
    reference = _cli(*args, "--out", str(ref))
    run = _cli(*args, "--out", str(out), stderr=subprocess.PIPE)
    progress = bytearray()

    def read() -> None:
        for chunk in iter(lambda: run.stderr.read1(4096), b""):
            progress.extend(chunk)

    threading.Thread(target=read, daemon=True).start()

    def calibrated_batches() -> int:
        counts = re.findall(rb"calibration:[^\r\n]*?\| *(\d+)/" + str(batches).encode(),
                            bytes(progress))
        return int(counts[-1]) if counts else -1

    _wait_for(lambda: calibrated_batches() >= kill_at, run, f"calibration batch {kill_at}")
    _kill(run)
    assert calibrated_batches() < batches  # killed mid-calibration
    assert list(tmp_path.iterdir()) in ([ref], [])  # no half output of the killed run

    _finish(_cli(*args, "--out", str(out)))
    _finish(reference)
    for name in ("model.safetensors", "minitron/importance.safetensors", "config.json"):
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref", "run"]


def test_export_killed_midway_leaves_no_complete_output(kill_inputs, tmp_path):
    from minitron_deploy.export import MANIFEST, verify_manifest

    # a seeded point inside the write: right after the temp dir appears (weights being
    # converted) or once the weights file is being written into it
    pattern = random.Random(SEED + 2).choice([".trt.tmp-*", ".trt.tmp-*/rank0.safetensors"])
    out = tmp_path / "trt"
    args = ["export", "--model", str(kill_inputs / "medium"), "--format", "trtllm",
            "--dtype", "fp32", "--out", str(out)]
    run = _cli(*args)
    _wait_for(lambda: any(tmp_path.glob(pattern)), run, pattern)
    _kill(run)
    assert not out.exists()
    assert not [p for p in tmp_path.rglob(MANIFEST)]  # nothing anywhere marked complete

    before = _tree(kill_inputs / "medium")
    _finish(_cli(*args))  # a leftover temp dir of the killed run does not block the re-run
    assert verify_manifest(out)["format"] == "trtllm"
    assert _tree(kill_inputs / "medium") == before


# --------------------------------------------------------------------------- full disk


def _enospc(path) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


@pytest.mark.parametrize("where", ["weights", "manifest"])
def test_full_disk_during_export_leaves_nothing(kill_inputs, tmp_path, capsys, monkeypatch,
                                                where):
    import minitron_deploy.export.output as output
    import minitron_deploy.export.trtllm as trtllm

    if where == "weights":
        def save_file(tensors, filename, metadata=None):
            Path(filename).write_bytes(b"\0" * 1000)  # half a file, then the disk is full
            raise _enospc(filename)
        monkeypatch.setattr(trtllm, "save_file", save_file)
    else:
        def write_json_atomic(path, data):
            raise _enospc(path)
        monkeypatch.setattr(output, "write_json_atomic", write_json_atomic)
    out = tmp_path / "out"
    capsys.readouterr()
    rc = main(["export", "--model", str(kill_inputs / "teacher"), "--format", "trtllm",
               "--dtype", "fp32", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("minitron: error:")]
    assert len(lines) == 1 and err.rstrip().splitlines()[-1] == lines[0], err
    assert lines[0].startswith("minitron: error: No space left on device: ")
    assert ("rank0.safetensors" if where == "weights" else "export_manifest.json") in lines[0]
    assert list(tmp_path.iterdir()) == []  # no output, no temp dir
