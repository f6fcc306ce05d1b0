"""Where a batch-1 decode step of the torch backend spends its time (kernel table).

Per-layer kernels do not depend on depth and the layer functions compile once, so a
Llama-3.1-8B-wide model cut to ``--layers`` layers shows the same kernels in less time.
Usage: PYTHONPATH=. python benchmarks/throughput/profile_decode.py [--layers 8] [--batch 1]
"""

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from minitron_deploy.bench.engine import EngineWeights
from minitron_deploy.bench.generator import StaticGenerator
from minitron_deploy.bench.hardware import measure_limits
from minitron_deploy.bench.limits import ModelCost
from minitron_deploy.bench.models import ModelSpec, load_model

parser = argparse.ArgumentParser()
parser.add_argument("--layers", type=int, default=8)
parser.add_argument("--batch", type=int, default=1)
parser.add_argument("--isl", type=int, default=512)
parser.add_argument("--osl", type=int, default=128)
args = parser.parse_args()

device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
dtype = torch.bfloat16
start = time.perf_counter()
spec = ModelSpec("llama31-8b")
model = load_model(spec, device, dtype)
model.model.layers = model.model.layers[:args.layers]
model.config.num_hidden_layers = args.layers
gen = StaticGenerator(EngineWeights(model, args.isl + args.osl), args.batch, args.isl + args.osl)
gen.capture()
prompts = torch.randint(0, model.config.vocab_size, (args.batch, args.isl), device=device)
print(f"built and compiled in {time.perf_counter() - start:.0f} s", flush=True)

steps = args.osl - 1
gen.prefill(prompts)
if device.type == "cuda":
    torch.cuda.synchronize()
t0 = time.perf_counter()
gen.decode(steps)
if device.type == "cuda":
    torch.cuda.synchronize()
step_s = (time.perf_counter() - t0) / steps
limits = measure_limits(device, dtype)
limit_s = limits.decode_step_s(ModelCost.of(model.config), args.batch,
                               args.isl + args.osl / 2, 2)
print(f"{args.layers} layers, batch {args.batch}: {1e3 * step_s:.3f} ms/step, limit "
      f"{1e3 * limit_s:.3f} ms ({100 * limit_s / step_s:.0f}%), bandwidth "
      f"{limits.bandwidth / 1e12:.2f} TB/s", flush=True)

# The same compiled kernels launched without the graph (kernel durations are what the graph
# replays; their sum per step against the graph's step time shows the launch gaps).
gen.prefill(prompts)
profiled = 10
activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
with torch.no_grad(), profile(activities=activities) as prof:
    for _ in range(profiled):
        gen._step()
    if device.type == "cuda":
        torch.cuda.synchronize()
print(f"kernel table over {profiled} steps:")
key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
table = prof.key_averages().table(sort_by=key, row_limit=22, max_name_column_width=70)
print(table)
