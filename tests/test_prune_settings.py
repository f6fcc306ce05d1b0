"""One settings schema for pruning: the CLI flags, the recipe's prune section, the Python API
and the ModelOpt mode's config are read off it, give the same one-line errors, and check a
reused scores file the same way (criterion, its settings, the weights' fingerprint)."""

import json

import pytest
import torch
import yaml
from surfaces import recipe_refusal, subparser
from tiny_models import CALIB_TEXT, save_tiny_checkpoint, tiny_batch, tiny_model

from minitron_deploy.cli import HelpFormatter, main
from minitron_deploy.core.errors import MinitronError
from minitron_deploy.core.schema import fields_of
from minitron_deploy.importance.scores import ImportanceScores, weights_fingerprint
from minitron_deploy.importance.settings import ScoringSettings
from minitron_deploy.pipeline.recipe import load_recipe
from minitron_deploy.pruning.api import prune
from minitron_deploy.pruning.settings import PruneSettings

mto = pytest.importorskip("modelopt.torch.opt")
import minitron_plugins.modelopt as mode  # noqa: E402
import modelopt.torch.prune as mtp  # noqa: E402

CALIB_ARGS = ["--calib-samples", "8", "--seq-len", "32", "--batch-size", "4"]
#: (setting, value as typed on the command line, as written in YAML / Python, the error)
BAD = [
    ("criterion", "taylor", "taylor",
     "criterion: 'taylor' is not one of activation, magnitude, random, mini-llm, loss-delta"),
    ("seq_agg", "max", "max", "seq_agg: 'max' is not one of mean, l2, var"),
    ("zo_eps", "-1", -1, "zo_eps: -1.0 must be positive"),
    ("zo_steps", "2.5", 2.5, "zo_steps: 2.5 is not an integer"),
    ("align", "64", "64", "align: cannot parse alignment '64'; use HIDDEN,FFN[,HEADS], "
                          "e.g. 64,64 or 128,128,2"),
    ("rescale_norms", "maybe", "maybe", "rescale_norms: 'maybe' is not one of auto, on, off"),
]


def _loop(model):
    for seed in range(3):
        model(input_ids=tiny_batch(seed=seed + 5), use_cache=False)


def _modelopt_prune(model, config, constraints=None):
    return mtp.prune(model, mode="hf_minitron", dummy_input=tiny_batch(),
                     constraints=constraints or {"export_config": {"ffn_hidden_size": 32}},
                     config=config)


@pytest.mark.parametrize("name, text, value, message", BAD)
def test_a_bad_value_gets_the_same_line_on_every_surface(tmp_path, capsys, name, text, value,
                                                         message):
    flag = f"--{name.replace('_', '-')}"
    assert main(["prune", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "o"),
                 "--hidden-size", "36", flag, text]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"minitron: error: {message}"]

    assert recipe_refusal(tmp_path, "prune", {name: value}) == f"r.yaml.prune.{message}"

    with pytest.raises(MinitronError) as err:
        prune(tmp_path / "m", tmp_path / "o", hidden_size=36, **{name: value})
    assert str(err.value) == message

    with pytest.raises(MinitronError) as err:
        _modelopt_prune(tiny_model("llama"), {"forward_loop": _loop, name: value})
    assert str(err.value) == message


def test_every_setting_is_a_flag_a_recipe_key_and_a_modelopt_key_or_says_why_not():
    formatter = HelpFormatter(prog="minitron")
    for command, schema in (("prune", PruneSettings), ("score", ScoringSettings)):
        actions = {a.dest: a for a in subparser(command)._actions}
        for f in fields_of(schema):
            action = actions[f.name]
            assert action.option_strings == [f"--{f.name.replace('_', '-')}"]
            help_text = formatter._get_help_string(action)
            assert f.setting.help in help_text and f"(default: {f.default_text()})" in help_text
    defaults = PruneSettings().record()
    assert PruneSettings.from_mapping(defaults, "r.yaml.prune") == PruneSettings()
    config = mode.HFMinitronSearcher().default_search_config
    for f in fields_of(PruneSettings):
        if f.setting.modelopt:
            assert f.name not in config
            with pytest.raises(MinitronError, match=f"^{f.name}: not a setting of the ModelOpt "
                                                    "mode"):
                _modelopt_prune(tiny_model("llama"), {"forward_loop": _loop, f.name: None})
        else:
            assert config[f.name] == defaults[f.name], f.name


def test_the_api_takes_settings_parts_and_keywords():
    from minitron_deploy.pruning.target import TargetSpec

    settings = PruneSettings.make(TargetSpec(num_layers=3), ScoringSettings(criterion="random"),
                                  scores="s.safetensors")
    assert (settings.num_layers, settings.criterion, settings.scores) == (3, "random",
                                                                          "s.safetensors")
    with pytest.raises(MinitronError, match=r"^unknown key\(s\) colour \(known: hidden_size"):
        PruneSettings.make(colour="blue")
    from minitron_deploy.pipeline.recipe import PruneStage

    stage = PruneStage.from_mapping({"search": {"target_params": 0.5}})
    with pytest.raises(MinitronError, match="^PruneStage is not part of PruneSettings: "
                                            "PruneSettings has no search$"):
        PruneSettings.make(stage)


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """Two same-shaped tiny Llamas with different weights and scores of the first one:
    (source, other, scores file)."""
    root = tmp_path_factory.mktemp("reuse")
    (root / "calib.txt").write_text(CALIB_TEXT)
    src, other = root / "src", root / "other"
    save_tiny_checkpoint("llama", src, seed=0)
    save_tiny_checkpoint("llama", other, seed=1)
    assert main(["score", "--model", str(src), "--calib", str(root / "calib.txt"), "--out",
                 str(root / "s.safetensors"), "--seq-agg", "l2", *CALIB_ARGS]) == 0
    return src, other, root / "s.safetensors"


def test_scores_record_the_weights_and_their_settings(scored):
    src, _, scores = scored
    from transformers import AutoModelForCausalLM

    meta = ImportanceScores.load(scores).meta
    model = AutoModelForCausalLM.from_pretrained(str(src))
    assert meta["weights"] == weights_fingerprint(model) == weights_fingerprint(
        model.to(torch.bfloat16))
    assert meta["seq_agg"] == "l2" and meta["criterion"] == "activation"


def _error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("minitron")]


def _reuse_errors(tmp_path, model_dir, scores, **settings) -> list[str]:
    """The error of reusing ``scores`` on ``model_dir`` through the CLI, a recipe's settings
    (what the pipeline passes to prune), the API and the ModelOpt mode."""
    from transformers import AutoModelForCausalLM

    errors = []
    flags = [x for k, v in settings.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    out = tmp_path / "out"
    code = main(["prune", "--model", str(model_dir), "--scores", str(scores), "--out", str(out),
                 "--ffn-hidden-size", "32", *flags])
    errors.append(code)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "r", "teacher": "/m", "data": "/d", "heldout": "/h",
                                      "prune": {"scores": str(scores), "ffn_hidden_size": 32,
                                                **settings}}))
    for call in (lambda: prune(model_dir, out, load_recipe(recipe).prune.prune_settings()),
                 lambda: prune(model_dir, out, scores=scores, ffn_hidden_size=32, **settings),
                 lambda: _modelopt_prune(AutoModelForCausalLM.from_pretrained(str(model_dir)),
                                         {"scores": str(scores), **settings})):
        with pytest.raises(MinitronError) as err:
            call()
        errors.append(str(err.value))
    assert not out.exists()
    return errors


def test_scores_of_other_weights_are_refused_on_every_path(scored, tmp_path, capsys):
    _, other, scores = scored
    code, *errors = _reuse_errors(tmp_path, other, scores, seq_agg="l2")
    message = ("the scores were computed on other weights than this model's (same shape, "
               "other values); compute them on this model")
    assert code == 2 and _error_lines(capsys) == [f"minitron: error: {message}"]
    assert errors == [message] * 3


@pytest.mark.parametrize("settings, message", [
    ({}, "seq_agg: the scores were computed with 'l2', not 'mean'"),
    ({"criterion": "magnitude"}, "criterion: the scores hold 'activation' scores, not "
                                 "'magnitude'; set criterion activation to use them"),
])
def test_scores_of_other_settings_are_refused_on_every_path(scored, tmp_path, capsys, settings,
                                                            message):
    src, _, scores = scored
    code, *errors = _reuse_errors(tmp_path, src, scores, **settings)
    assert code == 2 and _error_lines(capsys) == [f"minitron: error: {message}"]
    assert errors == [message] * 3


def test_scores_on_the_same_weights_are_reused(scored, tmp_path):
    src, _, scores = scored
    out = tmp_path / "out"
    prune(src, out, scores=scores, seq_agg="l2", ffn_hidden_size=32)
    record = json.loads((out / "minitron" / "minitron.json").read_text())
    assert record["settings"]["seq_agg"] == "l2" and record["settings"]["scores"] == str(scores)


def test_fingerprint_sees_values_not_only_shapes():
    model = tiny_model("llama")
    before = weights_fingerprint(model)
    with torch.no_grad():
        model.model.layers[2].mlp.up_proj.weight.mul_(1.5)
    assert weights_fingerprint(model) != before
    assert weights_fingerprint(tiny_model("llama", seed=3)) != before


@pytest.mark.parametrize("rescale, applied", [("auto", True), ("off", False)])
def test_modelopt_records_and_restores_the_norm_rescaling(tmp_path, rescale, applied):
    model, state = mtp.prune(tiny_model("llama"), mode="hf_minitron",
                             constraints={"export_config": {"hidden_size": 36}},
                             dummy_input=tiny_batch(),
                             config={"forward_loop": _loop, "rescale_norms": rescale})
    assert state["best"]["rescale_norms"] is applied
    assert model._minitron_pruning["rescale_norms"] is applied
    assert model._minitron_pruning["settings"]["rescale_norms"] == rescale
    mto.save(model, str(tmp_path / "m.pth"))
    restored = mto.restore(tiny_model("llama"), str(tmp_path / "m.pth"))
    x = tiny_batch()
    with torch.no_grad():
        assert torch.equal(restored(input_ids=x).logits, model(input_ids=x).logits)
