"""Reliability suite: a catalogue of bad inputs across every subcommand (each refused with one
line, a non-zero exit, no partial output and the input untouched), SIGKILL at fixed crash
points followed by a re-run (distill --resume, prune, export), and a full disk during export."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file
from tiny_models import CALIB_TEXT, save_tiny_checkpoint

from minitron_deploy.cli import main

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

WORKER = Path(__file__).with_name("fault_worker.py")


def _cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "minitron_deploy.cli", *args], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _killed_at(point: str, n: int, *args: str) -> None:
    """Run the CLI until it kills itself at the ``n``-th ``point`` (see fault_worker.py)."""
    run = subprocess.run([sys.executable, str(WORKER), point, str(n), *args], cwd=REPO,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert run.returncode == -signal.SIGKILL, (point, n, run.returncode, run.stderr[-2000:])


def _finish(proc: subprocess.Popen) -> None:
    assert proc.wait() == 0


@pytest.fixture(scope="module")
def kill_inputs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kill")
    save_tiny_checkpoint("llama", root / "teacher")
    save_tiny_checkpoint("llama", root / "student", seed=1, num_hidden_layers=2,
                         intermediate_size=40)
    (root / "text.txt").write_text(CALIB_TEXT)
    return root


def _losses(out: Path) -> list[float]:
    text = (out / "minitron" / "train_log.jsonl").read_text()
    return [json.loads(line)["loss"] for line in text.split("\n") if line.strip()]


def test_distill_killed_then_resumed_equals_uninterrupted(kill_inputs, tmp_path):
    steps, every, kill_at = 8, 2, 5  # killed after step 5: the last checkpoint is step 4
    args = ["distill", "--teacher", str(kill_inputs / "teacher"), "--student",
            str(kill_inputs / "student"), "--data", str(kill_inputs / "text.txt"),
            "--steps", str(steps), "--seq-len", "32", "--batch-size", "2",
            "--lr", "3e-3", "--checkpoint-every", str(every)]
    ref, out = tmp_path / "ref", tmp_path / "run"
    reference = _cli(*args, "--out", str(ref))  # uninterrupted, alongside the killed run
    _killed_at("distill-step", kill_at, *args, "--out", str(out))
    partial = tmp_path / ".run.partial" / "student"
    state = json.loads((partial / (partial / "latest").read_text() / "state.json").read_text())
    assert state["step"] == 4 and not out.exists()

    _finish(_cli(*args, "--out", str(out), "--resume"))
    _finish(reference)
    assert (out / "model.safetensors").read_bytes() == (ref / "model.safetensors").read_bytes()
    assert _losses(out) == _losses(ref) and len(_losses(out)) == steps
    assert not (tmp_path / ".run.partial").exists()


def test_prune_killed_mid_calibration_leaves_nothing_and_reruns_identically(kill_inputs,
                                                                            tmp_path):
    batches, kill_at = 16, 5  # killed as the 5th of 16 calibration batches starts
    args = ["prune", "--model", str(kill_inputs / "teacher"), "--calib",
            str(kill_inputs / "text.txt"), "--ffn-hidden-size", "40", "--num-heads", "4",
            "--calib-samples", str(batches), "--seq-len", "64", "--batch-size", "1"]
    ref, out = tmp_path / "ref", tmp_path / "run"
    reference = _cli(*args, "--out", str(ref))
    _killed_at("forward", kill_at, *args, "--out", str(out))
    assert list(tmp_path.iterdir()) in ([ref], [])  # no half output of the killed run

    _finish(_cli(*args, "--out", str(out)))
    _finish(reference)
    for name in ("model.safetensors", "minitron/importance.safetensors", "config.json"):
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref", "run"]


@pytest.mark.parametrize("point", ["trtllm-convert", "trtllm-save"])
def test_export_killed_midway_leaves_no_complete_output(kill_inputs, tmp_path, point):
    from minitron_deploy.export import MANIFEST, verify_manifest

    # killed as the weights are converted (the temp dir exists) or with the weights file
    # half written into it
    out = tmp_path / "trt"
    args = ["export", "--model", str(kill_inputs / "teacher"), "--format", "trtllm",
            "--dtype", "fp32", "--out", str(out)]
    _killed_at(point, 1, *args)
    assert [p.name[:9] for p in tmp_path.iterdir()] == [".trt.tmp-"]
    assert not out.exists()
    assert not [p for p in tmp_path.rglob(MANIFEST)]  # nothing anywhere marked complete

    before = _tree(kill_inputs / "teacher")
    _finish(_cli(*args))  # a leftover temp dir of the killed run does not block the re-run
    assert verify_manifest(out)["format"] == "trtllm"
    assert _tree(kill_inputs / "teacher") == before


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
