"""Layer-by-layer calibration for models larger than one device.

The weights stay on the CPU. One decoder layer at a time is copied to the device, every
calibration batch passes through it, and its outputs (kept on the device when they fit, else on
the CPU) are the next layer's inputs: peak device memory is about one layer plus the hidden
states. What each layer is called with (position embeddings, the attention mask of its layer
type, position ids, ...) is recorded by a forward in which stand-ins replace the layers, so
every layer gets exactly the arguments of a whole-model forward and the hooks on it (width and
Block Importance collectors) see the same tensors.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
from torch import nn
from tqdm.auto import tqdm

from ..arch import get_adapter
from ..core.errors import MinitronError
from .depth import BlockImportanceCollector
from .settings import OFFLOAD_MODES

if TYPE_CHECKING:
    from .settings import ScoringSettings

#: Criteria computed from the one calibration pass (or from no pass at all).
STREAMABLE_CRITERIA = ("activation", "magnitude", "random")
_GIB = 1 << 30


def resolve_offload(offload: str, device: str | torch.device, weight_bytes: int) -> str:
    """``"none"`` or ``"layer"``. ``"auto"`` streams layers when the weights plus a margin (a
    fifth of them and 2 GiB, for activations and logits) exceed the free memory of a CUDA
    device; on any other device it means ``"none"``."""
    if offload not in OFFLOAD_MODES:
        raise MinitronError(f"unknown offload mode {offload!r}; choose from "
                            f"{', '.join(OFFLOAD_MODES)}")
    device = torch.device(device)
    if offload != "auto":
        return offload
    if device.type != "cuda":
        return "none"
    free, _ = torch.cuda.mem_get_info(device)
    return "none" if weight_bytes * 1.2 + 2 * _GIB <= free else "layer"


def check_streamable(settings: ScoringSettings, depth_scored: bool) -> None:
    """Refuse the scores that need whole-model passes (mini-llm, loss-delta, accuracy depth)."""
    if settings.criterion not in STREAMABLE_CRITERIA:
        raise MinitronError(f"--criterion {settings.criterion} is not supported with "
                            "--offload layer")
    if depth_scored and settings.depth_metric == "accuracy":
        raise MinitronError("--depth-metric accuracy is not supported with --offload layer")


def module_bytes(module: nn.Module) -> int:
    """Bytes of the parameters and buffers of ``module`` (tied weights counted once)."""
    return sum(t.numel() * t.element_size()
               for t in (*module.parameters(), *module.buffers()))


@contextmanager
def resident(modules: Sequence[nn.Module], device: torch.device) -> Iterator[None]:
    """Copy the parameters and buffers of ``modules`` to ``device`` for the block, then put the
    original tensors back (nothing is copied back: the weights are only read)."""
    params: dict[int, tuple[nn.Parameter, torch.Tensor]] = {}
    buffers: list[tuple[nn.Module, str, torch.Tensor]] = []
    try:
        for module in modules:
            for m in module.modules():
                for p in m.parameters(recurse=False):
                    if id(p) not in params:
                        params[id(p)] = (p, p.data)
                        p.data = p.data.to(device)
                for name, b in m.named_buffers(recurse=False):
                    buffers.append((m, name, b))
                    setattr(m, name, b.to(device))
        yield
    finally:
        for p, data in params.values():
            p.data = data
        for m, name, b in reversed(buffers):
            setattr(m, name, b)


def _moved(obj, device: torch.device, memo: dict[int, torch.Tensor]):
    """``obj`` with every tensor (in tuples, lists, dicts) on ``device``; a tensor shared by
    several places is moved once and stays shared."""
    if isinstance(obj, torch.Tensor):
        if id(obj) not in memo:
            memo[id(obj)] = obj.to(device)
        return memo[id(obj)]
    if isinstance(obj, (tuple, list)):
        return type(obj)(_moved(x, device, memo) for x in obj)
    if isinstance(obj, dict):
        return {k: _moved(v, device, memo) for k, v in obj.items()}
    return obj


@dataclass
class _Batch:
    """One calibration batch in flight: its token ids, the hidden states entering the next
    layer, and per layer the arguments that follow the hidden states in its call."""

    ids: torch.Tensor
    hidden: torch.Tensor
    calls: list[tuple[tuple, dict]]


class _Stop(Exception):
    """Ends a capture forward once the last layer's call is recorded."""


class _Recorder(nn.Module):
    """Stands in for a decoder layer in a capture forward: records its call, passes the hidden
    states on unchanged."""

    def __init__(self, capture: dict, last: bool) -> None:
        super().__init__()
        self.capture, self.last = capture, last

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        self.capture.setdefault("hidden", hidden_states)
        self.capture["calls"].append((args, kwargs))
        if self.last:
            raise _Stop
        return hidden_states


class _BlockInputs:
    """Keeps the block inputs a :class:`BlockImportanceCollector` holds apart per batch: it
    expects each batch to pass every layer before the next one starts, while a layer-major pass
    interleaves the batches."""

    def __init__(self, collector: BlockImportanceCollector, batches: int,
                 device: torch.device, store: torch.device) -> None:
        self.collector, self.device, self.store = collector, device, store
        self.saved: list[dict[int, torch.Tensor]] = [{} for _ in range(batches)]

    @contextmanager
    def batch(self, b: int) -> Iterator[None]:
        self.collector._inputs = {j: t.to(self.device) for j, t in self.saved[b].items()}
        try:
            yield
        finally:
            self.saved[b] = {j: t.to(self.store) for j, t in self.collector._inputs.items()}
            self.collector._inputs = {}


class LayerStreamer:
    """Runs calibration batches through ``model`` (weights on the CPU) one decoder layer at a
    time on ``device``."""

    def __init__(self, model: nn.Module, device: str | torch.device) -> None:
        self.model, self.device = model, torch.device(device)
        self.adapter = get_adapter(model.config)
        self.layers = self.adapter.layers(model)

    @torch.no_grad()
    def activation_pass(self, batches: Sequence[torch.Tensor],
                        blocks: BlockImportanceCollector | None = None) -> None:
        """Every layer, then the final norm, over ``batches``: hooks on them see what a
        whole-model forward shows them; ``blocks`` gets its per-batch state kept apart."""
        store = self._storage(batches)
        state = self._capture(batches, store)
        kept = _BlockInputs(blocks, len(state), self.device, store) if blocks is not None else None
        for i in tqdm(range(len(self.layers)), desc="layer-wise calibration", unit="layer"):
            self._run_layer(i, state, store, kept)
        norm = self.adapter.final_norm(self.model)
        with resident([norm], self.device):
            for b in state:
                norm(b.hidden.to(self.device))

    @torch.no_grad()
    def loss_scores(self, batches: Sequence[torch.Tensor], block_size: int) -> torch.Tensor:
        """LM loss with each block of ``block_size`` layers removed, as
        :func:`~minitron_deploy.importance.depth.loss_scores` computes it; the hidden states
        before a block are computed once for all the blocks after it."""
        n = len(self.layers)
        starts = n - block_size + 1
        store = self._storage(batches)
        prefix = self._capture(batches, store)
        out = torch.empty(starts)
        loads = sum(n - block_size - s for s in range(starts)) + starts - 1
        with tqdm(total=loads, desc=f"depth loss (block {block_size}), layer-wise",
                  unit="layer", leave=False) as bar:
            for s in range(starts):
                state = [replace(b) for b in prefix]
                for j in range(s + block_size, n):
                    self._run_layer(j, state, store)
                    bar.update()
                out[s] = self._loss(state)
                if s + 1 < starts:
                    self._run_layer(s, prefix, store)
                    bar.update()
        return out

    def _storage(self, batches: Sequence[torch.Tensor]) -> torch.device:
        """Where hidden states wait between layers: on a CUDA device when four times their
        size fits beside two layers, else on the CPU."""
        if self.device.type != "cuda":
            return self.device
        dtype = next(self.model.parameters()).dtype
        hidden = sum(ids.numel() for ids in batches) * self.model.config.hidden_size
        need = 4 * hidden * dtype.itemsize + 2 * max(module_bytes(layer) for layer in self.layers)
        free, _ = torch.cuda.mem_get_info(self.device)
        return self.device if need <= free else torch.device("cpu")

    def _capture(self, batches: Sequence[torch.Tensor], store: torch.device) -> list[_Batch]:
        """Embeddings and every layer's call arguments, from forwards through stand-ins."""
        decoder = self.adapter.decoder(self.model)
        capture: dict = {}
        n = len(self.layers)
        decoder.layers = nn.ModuleList(_Recorder(capture, last=i == n - 1) for i in range(n))
        out = []
        try:
            with resident([decoder], self.device):  # the layers are out: embeddings, rotary
                for ids in batches:
                    capture.clear()
                    capture["calls"] = []
                    try:
                        self.model(input_ids=ids.to(self.device), use_cache=False)
                    except _Stop:
                        pass
                    memo: dict[int, torch.Tensor] = {}
                    out.append(_Batch(ids, _moved(capture["hidden"], store, memo),
                                      _moved(capture["calls"], store, memo)))
        finally:
            decoder.layers = self.layers
        return out

    def _run_layer(self, i: int, state: list[_Batch], store: torch.device,
                   kept: _BlockInputs | None = None) -> None:
        """Layer ``i`` on the device, every batch through it, outputs back to ``store``."""
        layer = self.layers[i]
        with resident([layer], self.device):
            for b, batch in enumerate(state):
                args, kwargs = _moved(batch.calls[i], self.device, {})
                hidden = batch.hidden.to(self.device)
                with kept.batch(b) if kept is not None else nullcontext():
                    output = layer(hidden, *args, **kwargs)
                output = output[0] if isinstance(output, tuple) else output
                batch.hidden = output.to(store)

    def _loss(self, state: list[_Batch]) -> float:
        """Mean next-token loss of the final norm and LM head on ``state``'s hidden states."""
        model = self.model
        norm, head = self.adapter.final_norm(model), self.adapter.lm_head(model)
        total = 0.0
        with resident([norm, head], self.device):
            for batch in state:
                logits = self.adapter.logits(model, batch.hidden.to(self.device))
                total += float(model.loss_function(logits=logits,
                                                   labels=batch.ids.to(self.device),
                                                   vocab_size=model.config.vocab_size))
        return total / len(state)
