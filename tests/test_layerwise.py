"""Layer-by-layer (offloaded) calibration gives the scores of a whole-model pass, streaming one
decoder layer at a time."""

from contextlib import contextmanager

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import (
    CALIB_TEXT,
    FAMILIES,
    save_tiny_checkpoint,
    tiny_batch,
    tiny_model,
)

from minitron_deploy.cli import main
from minitron_deploy.core.errors import MinitronError
from minitron_deploy.importance import layerwise
from minitron_deploy.importance.layerwise import resolve_offload
from minitron_deploy.pruning.scoring import ScoringSettings, score_model

# two batches of different sizes: the layer-major pass interleaves them
BATCHES = [tiny_batch(batch=2, seed=1), tiny_batch(batch=3, seed=2)]
SLIDING = dict(use_sliding_window=True, sliding_window=4, max_window_layers=2)


@pytest.fixture(autouse=True)
def one_thread():
    """The models are tiny: one thread is many times faster on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(case: str):
    """A tiny model; "qwen2-sliding" mixes full and sliding-window layers (two masks)."""
    return tiny_model("qwen2", **SLIDING) if case == "qwen2-sliding" else tiny_model(case)


@pytest.mark.parametrize("case", FAMILIES + ["qwen2-sliding"])
def test_layerwise_scores_equal_whole_model(case):
    model = _model(case)
    if case == "qwen2-sliding":
        assert set(model.config.layer_types) == {"full_attention", "sliding_attention"}
    whole = score_model(model, BATCHES, block_sizes=(1, 2))
    streamed = score_model(model, BATCHES, block_sizes=(1, 2), offload="layer")
    expected = {"hidden", "depth.bi.block1", "depth.bi.block2", "depth.loss.block1",
                "depth.loss.block2"} | {f"{axis}.{i}" for axis in ("mlp", "heads", "kv_heads")
                                        for i in range(4)}
    assert set(whole.tensors) == set(streamed.tensors) == expected
    for key, value in whole.tensors.items():
        torch.testing.assert_close(streamed.tensors[key], value, rtol=0, atol=0, msg=key)
    assert (whole.meta["offload"], streamed.meta["offload"]) == ("none", "layer")


def test_device_holds_one_decoder_layer_at_a_time(monkeypatch):
    model = tiny_model("llama")
    layers = list(model.model.layers)
    on_device: list[set[int]] = []  # parameter ids of each resident() block now open
    real = layerwise.resident

    @contextmanager
    def tracked(modules, device):
        with real(modules, device):
            on_device.append({id(p) for m in modules for p in m.parameters()})
            try:
                yield
            finally:
                on_device.pop()

    def resident_layers() -> list[int]:
        ids = set().union(*on_device)
        return [i for i, layer in enumerate(layers)
                if any(id(p) in ids for p in layer.parameters())]

    runs: list[int] = []

    def check(i):
        def hook(module, args):
            assert resident_layers() == [i]
            runs.append(i)
        return hook

    def no_layer(module, args):
        assert resident_layers() == []

    for i, layer in enumerate(layers):
        layer.register_forward_pre_hook(check(i))
    model.model.norm.register_forward_pre_hook(no_layer)
    model.lm_head.register_forward_pre_hook(no_layer)
    monkeypatch.setattr(layerwise, "resident", tracked)
    score_model(model, BATCHES, block_sizes=(1,), offload="layer")
    # activation pass, layer-major; then for each dropped layer s: the layers after it, then
    # layer s once more to advance the shared prefix (not after the last start)
    assert runs[:8] == [i for i in range(4) for _ in BATCHES]
    assert len(runs) == 8 + len(BATCHES) * (sum(3 - s for s in range(4)) + 3)


def test_weight_criteria_and_refusals():
    model = tiny_model("phi3")
    for criterion in ("magnitude", "random"):
        settings = ScoringSettings(criterion=criterion, depth_metric="bi")
        whole = score_model(model, BATCHES[:1], settings)
        streamed = score_model(model, BATCHES[:1], settings, offload="layer")
        for key, value in whole.tensors.items():
            torch.testing.assert_close(streamed.tensors[key], value, rtol=0, atol=0, msg=key)
    for settings, what in ((ScoringSettings(criterion="mini-llm"), "--criterion mini-llm"),
                           (ScoringSettings(criterion="loss-delta"), "--criterion loss-delta"),
                           (ScoringSettings(depth_metric="accuracy"), "--depth-metric accuracy")):
        with pytest.raises(MinitronError, match=f"{what} is not supported with --offload layer"):
            score_model(model, BATCHES, settings, offload="layer")


def test_auto_streams_only_when_the_model_does_not_fit(monkeypatch):
    gib = 1 << 30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (20 * gib, 80 * gib))
    assert resolve_offload("auto", "cuda", 10 * gib) == "none"
    assert resolve_offload("auto", "cuda:0", 16 * gib) == "layer"
    assert resolve_offload("auto", "cpu", 100 * gib) == "none"
    assert resolve_offload("layer", "cpu", 1) == "layer"
    with pytest.raises(MinitronError, match="unknown offload mode 'disk'"):
        resolve_offload("disk", "cpu", 1)


def test_cli_prune_offload_layer_gives_same_weights(tmp_path, capsys):
    src, calib = tmp_path / "src", tmp_path / "calib.txt"
    calib.write_text(CALIB_TEXT)
    save_tiny_checkpoint("qwen2", src, **SLIDING)
    common = ["prune", "--model", str(src), "--calib", str(calib), "--hidden-size", "36",
              "--ffn-hidden-size", "40", "--num-heads", "4", "--num-layers", "2",
              "--calib-samples", "6", "--seq-len", "16", "--batch-size", "4"]
    for mode in ("none", "layer"):
        assert main([*common, "--out", str(tmp_path / mode), "--offload", mode]) == 0
    weights = [load_file(str(tmp_path / mode / "model.safetensors")) for mode in ("none", "layer")]
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key
    scores = [load_file(str(tmp_path / mode / "minitron" / "importance.safetensors"))
              for mode in ("none", "layer")]
    assert "depth.loss.block2" in scores[1]
    for key in scores[0]:
        assert torch.equal(scores[0][key], scores[1][key]), key
    rc = main([*common, "--out", str(tmp_path / "refused"), "--offload", "layer",
               "--criterion", "loss-delta"])
    err = capsys.readouterr().err
    assert rc == 2 and "--criterion loss-delta is not supported with --offload layer" in err
    assert not (tmp_path / "refused").exists()
