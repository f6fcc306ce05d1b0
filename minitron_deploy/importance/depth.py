"""Depth importance of single layers and contiguous blocks (chosen separately from width).

Every score is "higher = more important", so the block to drop is always the lowest:
- ``loss``: LM loss on calibration batches with the block removed.
- ``bi``: Block Importance, 1 - cos(block input, block output), mean over tokens.
- ``accuracy``: accuracy drop on a multiple-choice task with the block removed (1 - accuracy).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from tqdm.auto import tqdm

from ..arch import get_adapter

DEPTH_METRICS = ("loss", "bi", "accuracy")


@contextmanager
def layers_removed(model: nn.Module, drop: Iterable[int]):
    """Temporarily run ``model`` without the layers in ``drop``. The kept layers are numbered
    0..n-1 meanwhile (their ``layer_idx``, the config's layer count and layer types follow),
    so a KV cache built for the shortened model lines up with them."""
    adapter = get_adapter(model.config)
    decoder, config = adapter.decoder(model), model.config
    original, original_types = decoder.layers, getattr(config, "layer_types", None)
    original_count = config.num_hidden_layers
    drop = set(drop)
    kept = [i for i in range(len(original)) if i not in drop]
    numbered = [(module, module.layer_idx, new) for new, i in enumerate(kept)
                for module in original[i].modules()
                if isinstance(getattr(module, "layer_idx", None), int)]
    decoder.layers = nn.ModuleList(original[i] for i in kept)
    config.num_hidden_layers = len(kept)
    if original_types is not None:
        config.layer_types = [original_types[i] for i in kept]
    for module, _, new in numbered:
        module.layer_idx = new
    try:
        yield model
    finally:
        decoder.layers = original
        config.num_hidden_layers = original_count
        if original_types is not None:
            config.layer_types = original_types
        for module, old, _ in numbered:
            module.layer_idx = old


class BlockImportanceCollector:
    """Forward hooks computing 1 - cos(in, out) for every block of the requested sizes."""

    def __init__(self, model: nn.Module, block_sizes: Sequence[int] = (1,)) -> None:
        self.layers = get_adapter(model.config).layers(model)
        n = len(self.layers)
        self.block_sizes = sorted({k for k in block_sizes if 1 <= k < n})
        self.sums = {k: torch.zeros(n - k + 1, dtype=torch.float64) for k in self.block_sizes}
        self.batches = 0
        self._inputs: dict[int, torch.Tensor] = {}
        self._handles: list = []

    def _pre_hook(self, j: int) -> Callable:
        def hook(module, args, kwargs):
            self._inputs[j] = (args[0] if args else kwargs["hidden_states"]).detach()
        return hook

    def _post_hook(self, j: int) -> Callable:
        def hook(module, args, output):
            out = (output[0] if isinstance(output, tuple) else output).detach().float()
            for k in self.block_sizes:
                start = j - k + 1
                if start >= 0:
                    cos = torch.nn.functional.cosine_similarity(
                        self._inputs[start].float(), out, dim=-1)
                    sums = self.sums[k]
                    if sums.device != out.device:  # accumulate where the model runs: no syncs
                        sums = self.sums[k] = sums.to(out.device)
                    sums[start] += (1 - cos).mean().double()
            self._inputs.pop(j - max(self.block_sizes, default=1) + 1, None)
            if j == len(self.layers) - 1:
                self.batches += 1
                self._inputs.clear()
        return hook

    @contextmanager
    def attached(self):
        try:
            for j, layer in enumerate(self.layers):
                self._handles.append(layer.register_forward_pre_hook(self._pre_hook(j),
                                                                     with_kwargs=True))
                self._handles.append(layer.register_forward_hook(self._post_hook(j)))
            yield self
        finally:
            for handle in self._handles:
                handle.remove()
            self._handles.clear()
            self._inputs.clear()

    def scores(self) -> dict[int, torch.Tensor]:
        if not self.batches:
            raise RuntimeError("no batch reached the last layer")
        return {k: (s / self.batches).float().cpu() for k, s in self.sums.items()}


def first_samples(batches: Sequence[torch.Tensor], samples: int) -> list[torch.Tensor]:
    """The leading batches holding at least ``samples`` samples (all if there are fewer)."""
    out, seen = [], 0
    for ids in batches:
        if seen >= samples:
            break
        out.append(ids)
        seen += len(ids)
    return out


def lm_loss(model: nn.Module, batches: Sequence[torch.Tensor]) -> float:
    """Mean next-token loss over equally sized batches of token ids."""
    device = next(model.parameters()).device
    total = 0.0
    with torch.no_grad():
        for ids in batches:
            ids = ids.to(device)
            total += float(model(input_ids=ids, labels=ids, use_cache=False).loss)
    return total / len(batches)


def block_scores(model: nn.Module, block_size: int,
                 evaluate: Callable[[nn.Module], float], desc: str) -> torch.Tensor:
    """``evaluate(model)`` with each contiguous block of ``block_size`` layers removed."""
    n = len(get_adapter(model.config).layers(model))
    out = torch.empty(n - block_size + 1)
    for start in tqdm(range(n - block_size + 1), desc=desc, leave=False):
        with layers_removed(model, range(start, start + block_size)):
            out[start] = evaluate(model)
    return out


def loss_scores(model: nn.Module, batches: Sequence[torch.Tensor], block_size: int = 1) -> torch.Tensor:
    """LM loss with each block removed (higher = the block matters more)."""
    return block_scores(model, block_size, lambda m: lm_loss(m, batches),
                        f"depth loss (block {block_size})")


def accuracy_scores(model: nn.Module, score_items: Callable[[nn.Module], float],
                    block_size: int = 1) -> torch.Tensor:
    """1 - task accuracy with each block removed; ``score_items(model)`` returns accuracy."""
    return 1.0 - block_scores(model, block_size, score_items, f"depth accuracy (block {block_size})")
