"""ONNX export of a pruned model: valid graph, dynamic batch and length, onnxruntime parity."""

import onnx
import torch
from test_trim import random_plan
from tiny_models import logits, tiny_batch, tiny_model

from minitron_deploy.export.onnx import onnx_logits, write_onnx
from minitron_deploy.pruning.trim import trim_model


def test_width_pruned_nemotron_matches_torch(tmp_path):
    model = tiny_model("nemotron")
    model = trim_model(model, random_plan(model, hidden=32, ffn=48, per_group=2, kv=2))
    path = write_onnx(model, tmp_path)
    graph = onnx.load(str(path)).graph
    assert [d.dim_param for d in graph.input[0].type.tensor_type.shape.dim] == ["batch",
                                                                              "sequence"]
    for ids in (tiny_batch(1, 5, seed=3), tiny_batch(3, 23, seed=4)):
        torch.testing.assert_close(onnx_logits(path, ids), logits(model, ids), atol=1e-4, rtol=0)
