"""Hidden-state distillation built from the pruning record: states pair by source layer and the
projections start as the kept-channel selection."""

import copy
import json
import math
import warnings

import pytest
import torch
from masking import masked_reference
from tiny_models import CALIB_TEXT, save_tiny_checkpoint, tiny_batch, tiny_model

from minitron_deploy.arch import get_adapter
from minitron_deploy.arch.modeling import load_model
from minitron_deploy.core.errors import MinitronError
from minitron_deploy.core.shape import ModelShape
from minitron_deploy.distill.losses import (
    default_layer_map,
    hidden_state_loss,
    pruned_layer_map,
    read_pruning_record,
)
from minitron_deploy.pruning.api import prune
from minitron_deploy.pruning.target import TargetSpec
from minitron_deploy.pruning.trim import KeepPlan, trim_model


def states(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False, output_hidden_states=True).hidden_states


def record(teacher, student, plan: KeepPlan, rescale: bool) -> dict:
    """The fields of ``minitron.json`` that the hidden-state loss reads."""
    return {"source_shape": ModelShape.from_config(teacher.config).as_dict(),
            "target_shape": ModelShape.from_config(student.config).as_dict(),
            "rescale_norms": rescale, "kept": plan.to_json()}


def width_pruned(family, hidden, rescale, **overrides):
    """Teacher and its student with only the hidden channels ``hidden`` kept (in that order)."""
    teacher = tiny_model(family, **overrides)
    plan = KeepPlan.keep_all(ModelShape.from_config(teacher.config))
    plan.hidden = hidden
    student = trim_model(copy.deepcopy(teacher), plan, rescale_norms=rescale)
    return teacher, student, plan


@pytest.fixture(scope="module")
def depth_pruned(tmp_path_factory):
    """A tiny llama and the student ``minitron prune`` makes by dropping its layer 2."""
    root = tmp_path_factory.mktemp("depth")
    save_tiny_checkpoint("llama", root / "teacher")
    (root / "calib.txt").write_text(CALIB_TEXT)
    prune(root / "teacher", root / "student", TargetSpec(drop_layers=[2]), calib=root / "calib.txt",
          calib_samples=4, seq_len=32, batch_size=2)
    return root


def test_depth_pruned_states_pair_with_their_source_layers(depth_pruned):
    teacher, _ = load_model(depth_pruned / "teacher")
    student, _ = load_model(depth_pruned / "student")
    pruning = read_pruning_record(depth_pruned / "student")
    assert pruning["kept"]["layers"] == [0, 1, 3]
    loss = hidden_state_loss("mse", 3, student.config, teacher.config, pruning)
    assert loss.layer_map == [(1, 1), (2, 2), (3, 4)]
    assert loss.layer_map != default_layer_map(3, 4, 3)  # evenly spaced pairs state 2 with 3
    parts = loss.pair_losses(states(student, tiny_batch()), states(teacher, tiny_batch()))
    assert parts[0].item() == 0.0 and parts[1].item() == 0.0  # before the dropped layer
    assert parts[2].item() > 0.0


def test_last_states_pair_after_the_final_norm():
    """Both models' last hidden state is normed, so it pairs with the teacher's last even when
    the teacher's last layer was dropped."""
    assert pruned_layer_map([0, 1, 2], 4, 3) == [(1, 1), (2, 2), (3, 4)]
    assert pruned_layer_map([1, 3], 4, 5) == [(1, 2), (2, 4)]
    assert pruned_layer_map([0, 2, 3, 5], 6, 2) == [(2, 3), (4, 6)]


@pytest.mark.parametrize("family,rescale", [("llama", True), ("nemotron", False)])
def test_width_pruned_projection_reproduces_zeroed_teacher(family, rescale):
    """At init the projected student states equal the teacher's with the pruned channels zeroed
    (norms as trimming computes them), at every mapped pair."""
    hidden = torch.randperm(48, generator=torch.Generator().manual_seed(0))[:36]
    eps = {"rms_norm_eps": 1e-12} if rescale else {}  # rescaling is exact up to the norm's eps
    teacher, student, plan = width_pruned(family, hidden, rescale, **eps)
    loss = hidden_state_loss("mse", 4, student.config, teacher.config,
                             record(teacher, student, plan, rescale))
    assert loss.layer_map == [(1, 1), (2, 2), (3, 3), (4, 4)]
    x = tiny_batch()
    s_states = states(student, x)
    t_embed = states(teacher, x)[0]
    with torch.no_grad():
        embed = loss.projections[0](s_states[0])
    mask = torch.zeros(48, dtype=torch.bool)
    mask[hidden] = True
    assert torch.equal(embed[..., mask], t_embed[..., mask])
    assert torch.equal(embed[..., hidden], s_states[0])
    assert not embed[..., ~mask].any()
    reference = states(masked_reference(teacher, plan, norms_over_kept=not rescale), x)
    with torch.no_grad():
        for (s, t), proj in zip(loss.layer_map, loss.projections):
            torch.testing.assert_close(proj(s_states[s]), reference[t], atol=1e-5, rtol=1e-4)


def test_unrescaled_final_norm_gets_the_rescale_factor():
    hidden = torch.randperm(48, generator=torch.Generator().manual_seed(2))[:36].sort().values
    teacher, plain, plan = width_pruned("llama", hidden, False, rms_norm_eps=1e-12)
    rescaled = trim_model(copy.deepcopy(teacher), plan, rescale_norms=True)
    loss = hidden_state_loss("cosine", 2, plain.config, teacher.config,
                             record(teacher, plain, plan, False))
    factor = math.sqrt(48 / 36)
    assert loss.projections[0].weight[hidden, torch.arange(36)].eq(1.0).all()
    assert loss.projections[1].weight[hidden, torch.arange(36)].eq(factor).all()
    assert loss.projections[1].weight.count_nonzero() == 36
    r = torch.randn(2, 5, 36)
    norm = get_adapter(teacher.config).final_norm
    with torch.no_grad():
        torch.testing.assert_close(norm(plain)(r) * factor, norm(rescaled)(r))


def test_permuted_channels_project_exactly_back():
    hidden = torch.randperm(48, generator=torch.Generator().manual_seed(1))
    teacher, student, plan = width_pruned("qwen3", hidden, True)
    loss = hidden_state_loss("cosine", 2, student.config, teacher.config,
                             record(teacher, student, plan, True))
    x = tiny_batch()
    s_states, t_states = states(student, x), states(teacher, x)
    with torch.no_grad():
        assert torch.equal(loss.projections[0](s_states[0]), t_states[0])
        for (s, t), proj in zip(loss.layer_map, loss.projections):
            torch.testing.assert_close(proj(s_states[s]), t_states[t], atol=1e-5, rtol=1e-4)


def test_record_of_another_teacher_falls_back_with_a_warning():
    hidden = torch.arange(12, 48)
    teacher, student, plan = width_pruned("llama", hidden, True)
    pruning = record(teacher, student, plan, True)
    pruning["source_shape"] = dict(pruning["source_shape"], hidden_size=64)
    with pytest.warns(UserWarning, match="ignoring the student's minitron.json") as caught:
        loss = hidden_state_loss("mse", 2, student.config, teacher.config, pruning)
    assert len(caught) == 1
    assert loss.layer_map == default_layer_map(4, 4, 2)
    assert torch.equal(loss.projections[0].weight, torch.eye(48, 36))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        silent = hidden_state_loss("mse", 2, student.config, teacher.config, None)
    assert silent.layer_map == loss.layer_map
    assert torch.equal(silent.projections[1].weight, torch.eye(48, 36))


def test_reading_the_record(tmp_path):
    assert read_pruning_record(tmp_path) is None
    (tmp_path / "minitron.json").write_text("{not json")
    with pytest.raises(MinitronError, match="not valid JSON"):
        read_pruning_record(tmp_path)
    (tmp_path / "minitron.json").write_text(json.dumps({"source_shape": {}}))
    model = tiny_model("llama")
    with pytest.raises(MinitronError, match="lacks target_shape, kept, rescale_norms"):
        hidden_state_loss("mse", 2, model.config, model.config, read_pruning_record(tmp_path))
