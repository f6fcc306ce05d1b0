"""The ``hf_minitron`` ModelOpt mode: prune, save/restore, HF checkpointing, next modes."""

import pytest
import torch

mto = pytest.importorskip("modelopt.torch.opt")
import minitron_plugins.modelopt  # noqa: E402,F401
import modelopt.torch.prune as mtp  # noqa: E402
from tiny_models import logits, tiny_batch, tiny_model  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from minitron_deploy.core.errors import MinitronError  # noqa: E402

EXPORT = {"hidden_size": 36, "ffn_hidden_size": 48, "num_attention_heads": 4, "num_layers": 3}


def loop(model):
    for seed in range(3):
        model(input_ids=tiny_batch(seed=seed + 5), use_cache=False)


def _pruned(family="llama"):
    model, _ = mtp.prune(tiny_model(family), mode="hf_minitron",
                         constraints={"export_config": EXPORT}, dummy_input=tiny_batch(),
                         config={"forward_loop": loop})
    return model


def test_mode_is_registered():
    assert "hf_minitron" in mtp.pruning.PruneModeRegistry


@pytest.mark.parametrize("family", ["llama", "phi3"])
def test_prune_gives_target_shape(family):
    model = _pruned(family)
    cfg = model.config
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads,
            cfg.num_hidden_layers) == (36, 48, 4, 3)
    assert torch.isfinite(logits(model, tiny_batch())).all()


def test_save_restore_round_trip(tmp_path):
    model = _pruned()
    x = tiny_batch()
    mto.save(model, str(tmp_path / "m.pth"))
    restored = mto.restore(tiny_model("llama", seed=7), str(tmp_path / "m.pth"))
    assert torch.equal(logits(restored, x), logits(model, x))


@pytest.fixture
def hf_checkpointing():
    """ModelOpt's save/restore patches of the Hugging Face classes for one test: the classes
    are restored afterwards, so other tests load and save stock checkpoints."""
    from modelopt.torch.opt.plugins import huggingface as plugin

    classes = [c for group, _ in plugin._LIBRARY_CLASSES_FOR_PATCHING.values() for c in group]
    before = {cls: dict(vars(cls)) for cls in classes}
    patched = set(plugin._PATCHED_CLASSES)
    mto.enable_huggingface_checkpointing()
    yield
    for cls, attributes in before.items():
        for name in set(vars(cls)) - set(attributes):
            delattr(cls, name)
        for name, value in attributes.items():
            if vars(cls).get(name) is not value:
                setattr(cls, name, value)
    plugin._PATCHED_CLASSES.clear()
    plugin._PATCHED_CLASSES.update(patched)


def test_huggingface_checkpointing_round_trip(tmp_path, hf_checkpointing):
    model = _pruned()
    model.save_pretrained(str(tmp_path / "hf"))
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"),
                                                  attn_implementation="eager").eval()
    x = tiny_batch()
    assert torch.equal(logits(loaded, x), logits(model, x))


def test_kd_loss_and_quantize_follow():
    import modelopt.torch.distill as mtd
    import modelopt.torch.quantization as mtq
    from minitron_plugins.modelopt_distill import HFLogitsKDLoss

    student = _pruned()
    kd = mtd.convert(student, mode=[("kd_loss", {"teacher_model": tiny_model("llama"),
                                                 "criterion": HFLogitsKDLoss()})])
    out = kd(input_ids=tiny_batch(), use_cache=False)
    loss = kd.compute_kd_loss()
    assert out.logits.shape[-1] == 97 and torch.isfinite(loss)
    quantized = mtq.quantize(_pruned(), mtq.FP8_DEFAULT_CFG, forward_loop=loop)
    assert torch.isfinite(logits(quantized, tiny_batch())).all()


def test_pruned_model_distils_through_modelopt_with_our_trainer(tmp_path):
    """hf_minitron prune -> mtd.convert -> our trainer -> mtd.export: the KD loss falls."""
    import modelopt.torch.distill as mtd
    from minitron_plugins.modelopt_distill import modelopt_kd_objective

    from minitron_deploy.distill.trainer import TrainConfig, train

    teacher = tiny_model("llama")
    objective = modelopt_kd_objective(_pruned(), teacher)
    sequences = torch.randint(3, 97, (16, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = float(objective(sequences[:8]).total)
    records = train(objective, sequences, TrainConfig(steps=12, batch_size=4, lr=3e-3),
                    tmp_path / "work")
    with torch.no_grad():
        after = float(objective(sequences[:8]).total)
    assert after < 0.7 * before and len(records) == 12
    assert all(not p.requires_grad for p in teacher.parameters())
    student = mtd.export(objective.model)
    assert student.config.hidden_size == EXPORT["hidden_size"]
    assert torch.isfinite(logits(student, tiny_batch())).all()


def _frozen(model) -> list[str]:
    return [n for n, p in model.named_parameters() if not p.requires_grad]


def test_every_parameter_trainable_after_prune_and_restore(tmp_path):
    model = _pruned()
    assert _frozen(model) == []
    mto.save(model, str(tmp_path / "m.pth"))
    assert _frozen(mto.restore(tiny_model("llama", seed=7), str(tmp_path / "m.pth"))) == []


def test_frozen_source_parameters_stay_frozen():
    model = tiny_model("llama")
    model.model.embed_tokens.requires_grad_(False)
    model.model.layers[0].mlp.up_proj.weight.requires_grad_(False)
    pruned, _ = mtp.prune(model, mode="hf_minitron", constraints={"export_config": EXPORT},
                          dummy_input=tiny_batch(), config={"forward_loop": loop})
    assert set(_frozen(pruned)) >= {"model.embed_tokens.weight",
                                    "model.layers.0.mlp.up_proj.weight"}
    assert len(_frozen(pruned)) == 2


def test_modelopt_kd_route_trains_every_student_linear(tmp_path):
    import modelopt.torch.distill as mtd
    from minitron_plugins.modelopt_distill import modelopt_kd_objective

    from minitron_deploy.distill.trainer import TrainConfig, train

    objective = modelopt_kd_objective(_pruned(), tiny_model("llama"))
    student = objective.model
    linears = {n: m.weight for n, m in student.named_modules()
               if isinstance(m, torch.nn.Linear) and not n.startswith("_teacher_model")}
    assert linears and all(w.requires_grad for w in linears.values())
    before = {n: w.detach().clone() for n, w in linears.items()}
    sequences = torch.randint(3, 97, (8, 16), generator=torch.Generator().manual_seed(0))
    train(objective, sequences, TrainConfig(steps=3, batch_size=4, lr=1e-3, strategy="single"),
          tmp_path / "work")
    exported = mtd.export(student)
    assert _frozen(exported) == []
    unchanged = [n for n, w in linears.items() if torch.equal(w.detach(), before[n])]
    assert unchanged == []


def test_params_budget_follows_align():
    model, state = mtp.prune(tiny_model("llama"), mode="hf_minitron",
                             constraints={"params": "60%"}, dummy_input=tiny_batch(),
                             config={"forward_loop": loop, "align": {"hidden": 8, "ffn": 8}})
    assert state["best"]["align"] == {"hidden": 8, "ffn": 8, "heads": 1}
    assert model.config.hidden_size % 8 == 0 and model.config.intermediate_size % 8 == 0
    with pytest.raises(MinitronError,
                       match=r"^align: unknown key\(s\) h \(known: hidden, ffn, heads\)"):
        mtp.prune(tiny_model("llama"), mode="hf_minitron", constraints={"params": 0.6},
                  dummy_input=tiny_batch(), config={"forward_loop": loop, "align": {"h": 8}})


def test_bad_constraint_refused():
    with pytest.raises(MinitronError, match="unsupported export_config"):
        mtp.prune(tiny_model("llama"), mode="hf_minitron",
                  constraints={"export_config": {"mamba_num_heads": 2}},
                  dummy_input=tiny_batch(), config={"forward_loop": loop})
