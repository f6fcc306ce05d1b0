"""Greedy generation with a static KV cache: batched prefill, then one CUDA graph per decode step.

The decode step reads everything from device buffers (current token, position, cache) and
writes the next token and position back, so ``osl - 1`` graph replays run with no host work
between them. On CPU the same functions run eagerly (what the tests exercise).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .engine import EngineWeights, decode_layer, next_token, prefill_layer

#: Cache length granularity (keeps the attention mask aligned for the fused SDPA kernels).
_CACHE_ALIGN = 64


def _configure_inductor(batch: int) -> None:
    """Fresh static-shape compiles per generator; at batch 1 coordinate-descent tuning, which
    also lowers the M=1 matmuls to tuned Triton GEMVs (batch-1 decode is all GEMVs). Larger
    batches keep cuBLAS and skip the tuning's compile time."""
    import torch._dynamo
    import torch._inductor.config as inductor

    torch._dynamo.reset()
    torch._dynamo.config.cache_size_limit = 64
    inductor.coordinate_descent_tuning = batch == 1


class StaticGenerator:
    """Greedy generation for a fixed batch size and total length (prompt + output)."""

    def __init__(self, weights: EngineWeights, batch: int, max_len: int,
                 accelerate: bool | None = None):
        device, dtype, s = weights.embed.device, weights.embed.dtype, weights.shape
        if weights.cos.shape[0] < max_len:
            raise ValueError(f"weights were prepared for {weights.cos.shape[0]} positions, "
                             f"not {max_len}")
        self.weights, self.batch, self.max_len = weights, batch, max_len
        self.layers = weights.layer_tensors()
        cache_len = -(-max_len // _CACHE_ALIGN) * _CACHE_ALIGN
        shape = (batch, s.num_kv_heads, cache_len, s.head_dim)
        self.k_cache = [torch.zeros(shape, device=device, dtype=dtype) for _ in self.layers]
        self.v_cache = [torch.zeros(shape, device=device, dtype=dtype) for _ in self.layers]
        self.slots = torch.arange(cache_len, device=device)
        self.pos = torch.zeros(1, dtype=torch.long, device=device)
        self.tokens = torch.zeros(batch, dtype=torch.long, device=device)
        self.out = torch.zeros(batch, max_len, dtype=torch.long, device=device)
        self.host_pos = 0  # mirrors ``pos`` so decode() needs no device sync
        self.accelerate = device.type == "cuda" if accelerate is None else accelerate
        self._prefill_layer, self._decode_layer, self._head = prefill_layer, decode_layer, next_token
        self.graph: torch.cuda.CUDAGraph | None = None
        if self.accelerate:
            _configure_inductor(batch)
            self._prefill_layer = torch.compile(prefill_layer, dynamic=False)
            self._decode_layer = torch.compile(decode_layer, dynamic=False)
            self._head = torch.compile(next_token, dynamic=False)

    @torch.no_grad()
    def prefill(self, prompts: torch.Tensor) -> None:
        """Run the prompts ``[batch, S]`` (positions 0..S-1) and predict token S."""
        w, s = self.weights, self.weights.shape
        n = prompts.shape[1]
        if prompts.shape[0] != self.batch or n >= self.max_len:
            raise ValueError(f"prompts {tuple(prompts.shape)} do not fit batch {self.batch}, "
                             f"length {self.max_len}")
        x = F.embedding(prompts, w.embed)
        cos, sin = w.cos[:n], w.sin[:n]
        for layer, k, v in zip(self.layers, self.k_cache, self.v_cache):
            x = self._prefill_layer(x, layer, s, cos, sin, k, v)
        token = self._head(x, w.norm, w.lm_head, s.eps)
        self.tokens.copy_(token)
        self.out[:, n] = token
        self.pos.fill_(n)
        self.host_pos = n

    def _step(self) -> None:
        """Token at ``pos`` -> token at ``pos + 1``, all on device (graph-capturable)."""
        w, s = self.weights, self.weights.shape
        x = F.embedding(self.tokens[:, None], w.embed)
        cos, sin = w.cos.index_select(0, self.pos), w.sin.index_select(0, self.pos)
        mask = (self.slots <= self.pos).view(1, 1, 1, -1)
        for layer, k, v in zip(self.layers, self.k_cache, self.v_cache):
            x = self._decode_layer(x, layer, s, cos, sin, k, v, self.pos, mask)
        token = self._head(x, w.norm, w.lm_head, s.eps)
        self.tokens.copy_(token)
        self.out.index_copy_(1, self.pos + 1, token[:, None])
        self.pos.add_(1)

    @torch.no_grad()
    def capture(self) -> None:
        """Compile (first calls) and capture one decode step as a CUDA graph."""
        if not self.accelerate or self.graph is not None:
            return
        self.pos.zero_()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                self._step()
        torch.cuda.current_stream().wait_stream(stream)
        self.pos.zero_()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._step()
        self.graph = graph

    @torch.no_grad()
    def decode(self, steps: int) -> None:
        """``steps`` more tokens per sequence after :meth:`prefill`."""
        if self.host_pos + steps >= self.max_len:
            raise ValueError(f"{steps} steps from position {self.host_pos} exceed length "
                             f"{self.max_len}")
        for _ in range(steps):
            if self.graph is not None:
                self.graph.replay()
            else:
                self._step()
        self.host_pos += steps

    def generated(self, prompt_len: int, new_tokens: int) -> torch.Tensor:
        """The ``[batch, new_tokens]`` tokens produced after a prompt of ``prompt_len``."""
        return self.out[:, prompt_len:prompt_len + new_tokens]

    @torch.no_grad()
    def generate(self, prompts: torch.Tensor, new_tokens: int) -> torch.Tensor:
        """Greedy continuation of ``prompts`` by exactly ``new_tokens`` tokens (EOS ignored)."""
        self.capture()
        self.prefill(prompts)
        self.decode(new_tokens - 1)
        return self.generated(prompts.shape[1], new_tokens).clone()
