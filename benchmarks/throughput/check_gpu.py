"""On a CUDA machine: the compiled, graph-captured torch backend gives HF generate's greedy
tokens (tiny fp32 models of the families with biases and q/k norms)."""

import sys
import time

import torch
from transformers import GenerationConfig

sys.path.insert(0, "tests")
from tiny_models import tiny_batch, tiny_model  # noqa: E402

from minitron_deploy.bench.engine import EngineWeights  # noqa: E402
from minitron_deploy.bench.generator import StaticGenerator  # noqa: E402

for family in ("llama", "qwen3"):
    start = time.perf_counter()
    model = tiny_model(family).cuda()
    ids = tiny_batch(3, 24).cuda()
    generator = StaticGenerator(EngineWeights(model, 64), 3, 64)
    ours = generator.generate(ids, 32)
    again = generator.generate(ids, 32)  # graph replays reuse the cache buffers
    config = GenerationConfig(max_new_tokens=32, do_sample=False, eos_token_id=None,
                              pad_token_id=0)
    ref = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)
    ref = ref[:, ids.shape[1]:]
    print(f"{family}: graph={generator.graph is not None} equal={torch.equal(ours, ref)} "
          f"repeat_equal={torch.equal(ours, again)} "
          f"match={(ours == ref).float().mean().item():.3f} ({time.perf_counter() - start:.0f} s)",
          flush=True)
