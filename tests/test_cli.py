"""The CLI route end to end on saved tiny checkpoints, and its refusals of bad input."""

import json
import subprocess
import sys

import pytest
import torch
from masking import masked_reference
from surfaces import subparser
from tiny_models import CALIB_TEXT, logits, save_tiny_checkpoint, tiny_batch
from transformers import AutoModelForCausalLM

from minitron_deploy.cli import main
from minitron_deploy.core.errors import MinitronError
from minitron_deploy.core.precision import resolve_device
from minitron_deploy.pipeline.recipe import load_recipe
from minitron_deploy.pruning.trim import KeepPlan

CALIB_ARGS = ["--calib-samples", "8", "--seq-len", "32", "--batch-size", "4"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    (root / "calib.txt").write_text(CALIB_TEXT)
    return root


@pytest.mark.parametrize("family", ["llama", "phi3", "nemotron"])
def test_prune_writes_stock_checkpoint_equal_to_masked_source(workspace, family):
    src, out = workspace / f"src-{family}", workspace / f"out-{family}"
    # eps ~ 0 so the rescaled RMSNorm reference is exact, not just close
    model = save_tiny_checkpoint(family, src, **({} if family == "nemotron" else
                                                 {"rms_norm_eps": 1e-12}))
    rc = main(["prune", "--model", str(src), "--calib", str(workspace / "calib.txt"),
               "--out", str(out), "--hidden-size", "36", "--ffn-hidden-size", "40",
               "--num-layers", "3", *CALIB_ARGS])
    assert rc == 0
    record = json.loads((out / "minitron" / "minitron.json").read_text())
    assert record["target_shape"]["hidden_size"] == 36 and len(record["dropped_layers"]) == 1
    assert record["rescale_norms"] is (family != "nemotron")  # the value applied, not the request
    assert (out / "minitron" / "importance.safetensors").is_file()
    assert (out / "tokenizer.json").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["head_dim"] == model.config.hidden_size // model.config.num_attention_heads
    pruned = AutoModelForCausalLM.from_pretrained(str(out), trust_remote_code=False).eval()
    plan = KeepPlan.from_json(record["kept"])
    x = tiny_batch()
    # default: RMSNorm families carry the rescale (equal to zeroing with the source norms),
    # LayerNorm ones normalize over the kept channels
    reference = masked_reference(model.eval(), plan, norms_over_kept=family == "nemotron")
    assert torch.allclose(logits(pruned, x), logits(reference, x), atol=1e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def pruned_llama(workspace):
    """A tiny Llama checkpoint and a calibrated prune of it: (source, output folder)."""
    src, out = workspace / "reuse-src", workspace / "reuse-pruned"
    save_tiny_checkpoint("llama", src)
    assert main(["prune", "--model", str(src), "--calib", str(workspace / "calib.txt"),
                 "--out", str(out), "--hidden-size", "36", "--ffn-hidden-size", "40",
                 "--num-layers", "3", *CALIB_ARGS]) == 0
    return src, out


def test_scores_reuse_gives_same_model(pruned_llama, tmp_path):
    src, first = pruned_llama
    scores = first / "minitron" / "importance.safetensors"
    out = tmp_path / "reuse"
    assert main(["prune", "--model", str(src), "--scores", str(scores), "--out", str(out),
                 "--hidden-size", "36", "--ffn-hidden-size", "40", "--num-layers", "3"]) == 0
    kept = json.loads((first / "minitron" / "minitron.json").read_text())["kept"]
    assert json.loads((out / "minitron" / "minitron.json").read_text())["kept"] == kept


def test_align_is_applied_and_recorded(pruned_llama, tmp_path):
    src, scores = pruned_llama
    out = tmp_path / "aligned"
    assert main(["prune", "--model", str(src), "--scores", str(scores), "--out", str(out),
                 "--target-params", "0.6", "--align", "8,8,2"]) == 0
    record = json.loads((out / "minitron" / "minitron.json").read_text())
    assert record["align"] == record["request"]["align"] == {"hidden": 8, "ffn": 8, "heads": 2}
    shape = record["target_shape"]
    assert shape["hidden_size"] % 8 == shape["ffn_hidden_size"] % 8 == shape["num_heads"] % 2 == 0


def test_modelopt_route_equals_cli_route(workspace, tmp_path):
    import minitron_plugins.modelopt  # noqa: F401
    import modelopt.torch.prune as mtp

    src = workspace / "src-qwen"
    save_tiny_checkpoint("qwen2", src)
    out = tmp_path / "cli"
    assert main(["prune", "--model", str(src), "--calib", str(workspace / "calib.txt"),
                 "--out", str(out), "--hidden-size", "40", "--num-heads", "4",
                 "--num-layers", "3", "--depth-metric", "bi", *CALIB_ARGS]) == 0
    cli_model = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    model = AutoModelForCausalLM.from_pretrained(str(src)).eval()
    pruned, _ = mtp.prune(model, mode="hf_minitron",
                          constraints={"export_config": {"hidden_size": 40, "num_attention_heads": 4,
                                                         "num_layers": 3}},
                          dummy_input=tiny_batch(),
                          config={"scores": str(out / "minitron" / "importance.safetensors"),
                                  "depth_metric": "bi"})
    cli_state, mo_state = cli_model.state_dict(), pruned.state_dict()
    assert cli_state.keys() == mo_state.keys()
    assert all(torch.equal(cli_state[k], mo_state[k]) for k in cli_state)


def _run_cli(*args):
    return subprocess.run([sys.executable, "-m", "minitron_deploy.cli", *args],
                          capture_output=True, text=True)


def test_bad_inputs_give_one_line_errors(workspace, tmp_path, capsys):
    """Each bad input exits 2 with one ``minitron`` line and writes nothing; the first runs as
    a real process (exit status and stderr as a shell sees them), the rest in this one."""
    src = workspace / "src-bad"
    save_tiny_checkpoint("llama", src)
    calib = str(workspace / "calib.txt")
    corrupt = tmp_path / "corrupt"
    save_tiny_checkpoint("llama", corrupt)
    (corrupt / "model.safetensors").write_bytes(b"\x00" * 64)
    unsupported = tmp_path / "gpt2"
    unsupported.mkdir()
    (unsupported / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    out = tmp_path / "out"
    cases = [
        (["--model", str(tmp_path / "missing"), "--calib", calib], "does not exist"),
        (["--model", str(corrupt), "--calib", calib], "cannot load weights"),
        (["--model", str(unsupported), "--calib", calib], "unsupported architecture 'gpt2'"),
        (["--model", str(src), "--calib", calib, "--hidden-size", "96"], "larger than the source"),
        (["--model", str(src), "--calib", str(empty)], "contains no text"),
        (["--model", str(src), "--calib", calib, "--out", str(src)], "input model"),
        (["--model", str(src), "--calib", calib, "--align", "64"], "HIDDEN,FFN"),
        (["--model", str(src), "--calib", calib, "--drop-layers", "5-x"],
         "drop_layers: cannot parse layer list '5-x'"),
    ]
    for i, (args, message) in enumerate(cases):
        full = ["prune", *args, *CALIB_ARGS]
        if "--out" not in args:
            full += ["--out", str(out)]
        if "--hidden-size" not in args:
            full += ["--ffn-hidden-size", "40"]
        if i == 0:
            result = _run_cli(*full)
            rc, stderr = result.returncode, result.stderr
        else:
            rc, stderr = main(full), capsys.readouterr().err
        assert rc == 2, (args, stderr)
        lines = [line for line in stderr.strip().splitlines() if line.startswith("minitron")]
        assert len(lines) == 1 and message in lines[0], stderr
        assert not out.exists()
        assert not list(tmp_path.glob(".out.tmp-*"))
    assert (src / "model.safetensors").exists()


def test_rescale_on_layernorm_refused_before_work(workspace, tmp_path, capsys):
    src = workspace / "src-nemo-rescale"
    save_tiny_checkpoint("nemotron", src)
    rc = main(["prune", "--model", str(src), "--calib", str(tmp_path / "not-read.txt"),
               "--out", str(tmp_path / "out"), "--hidden-size", "36", "--rescale-norms", "on"])
    assert rc == 2 and "applies to RMSNorm models" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


#: The least each command that takes --device parses.
REQUIRED = {"prune": ["--model", "m", "--out", "o"], "score": ["--model", "m", "--out", "o"],
            "distill": ["--teacher", "t", "--student", "s", "--data", "d", "--out", "o"],
            "eval": ["--model", "m", "--out", "o"], "search": ["--model", "m", "--out", "o"],
            "export": ["--model", "m", "--format", "hf", "--out", "o"]}


@pytest.mark.parametrize("command", REQUIRED)
def test_device_defaults_to_auto_and_a_bad_one_is_refused_in_one_line(command, capsys):
    assert subparser(command).parse_args(REQUIRED[command]).device == "auto"
    assert subparser(command).parse_args([*REQUIRED[command], "--device", "cuda:1"]).device \
        == "cuda:1"
    assert main([command, *REQUIRED[command], "--device", "gpu"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "minitron: error: device: 'gpu' is not auto, cpu, cuda or cuda:N"]


def test_auto_device_is_cuda_exactly_when_a_gpu_is_visible(monkeypatch, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("{name: r, teacher: /m, data: /d, heldout: /h}")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and load_recipe(recipe).device == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda" and load_recipe(recipe).device == "cuda"
    assert [resolve_device(d) for d in ("cpu", "cuda", "cuda:3")] == ["cpu", "cuda", "cuda:3"]
    for bad in ("gpu", "cuda:x", "CPU", "", "cuda:0 "):
        with pytest.raises(MinitronError, match=f"^device: {bad!r} is not auto, cpu, cuda or "
                                                "cuda:N$"):
            resolve_device(bad)
