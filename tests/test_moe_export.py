"""Export of pruned mixture-of-experts checkpoints: Hugging Face export reloads to the same
logits, ONNX export (experts as batched matmuls) gives onnxruntime logits equal to the model's
own, TensorRT-LLM export is refused in one line before anything is written."""

import copy

import pytest
import torch
from test_moe_trim import moe_plan
from tiny_models import MOE_FAMILIES, char_tokenizer, logits, tiny_batch, tiny_model
from transformers import AutoModelForCausalLM

from minitron_deploy.arch import get_adapter
from minitron_deploy.core.errors import MinitronError
from minitron_deploy.export.api import export
from minitron_deploy.pruning.trim import trim_model


def pruned_moe(family: str):
    """``family`` with 4 of 6 experts of 16 of 24 neurons each (and Qwen3-MoE's dense layer
    at 40 neurons), a random seeded choice."""
    model = tiny_model(family)
    return trim_model(model, moe_plan(model, experts=4, expert_ffn=16, ffn=40))


def save(model, path):
    model.save_pretrained(str(path))
    char_tokenizer().save_pretrained(str(path))
    return path


@pytest.mark.parametrize("family", MOE_FAMILIES)
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_hf_export_reloads_to_the_same_logits(family, dtype, tmp_path):
    model = pruned_moe(family)
    src = save(model, tmp_path / "src")
    export(src, tmp_path / "hf", "hf", dtype=dtype, device="cpu")
    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"),
                                                    attn_implementation="eager").eval()
    adapter = get_adapter(model.config)
    assert adapter.expert_shape(reloaded.config) == adapter.expert_shape(model.config)
    assert adapter.expert_shape(model.config).num_experts == 4
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    expected = model.to(torch_dtype).state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in reloaded.state_dict().items())
    # the source as transformers loads it in that dtype (rotary tables stay fp32)
    reference = AutoModelForCausalLM.from_pretrained(str(src), attn_implementation="eager",
                                                     dtype=torch_dtype).eval()
    x = tiny_batch()
    assert torch.equal(logits(reloaded, x), logits(reference, x))


def test_trtllm_export_refuses_moe_in_one_line_before_writing(tmp_path):
    src = save(pruned_moe("mixtral"), tmp_path / "src")
    with pytest.raises(MinitronError, match=r"^TensorRT-LLM export does not support mixtral: "
                                            r"mixture-of-experts") as err:
        export(src, tmp_path / "trt", "trtllm", device="cpu")
    assert "\n" not in str(err.value) and not (tmp_path / "trt").exists()


def test_onnx_export_of_a_pruned_moe_matches_torch(tmp_path):
    pytest.importorskip("onnxruntime")
    from minitron_deploy.export.onnx import onnx_logits

    model = pruned_moe("qwen3_moe")
    reference = copy.deepcopy(model)  # transformers' default (grouped) experts
    src = save(model, tmp_path / "src")
    result = export(src, tmp_path / "onnx", "onnx", device="cpu")
    assert result.manifest["format"] == "onnx"
    for ids in (tiny_batch(1, 5, seed=3), tiny_batch(3, 23, seed=4)):
        torch.testing.assert_close(onnx_logits(tmp_path / "onnx" / "model.onnx", ids),
                                   logits(reference, ids), atol=1e-4, rtol=0)
