"""Recipe validation and the packaged recipes."""

import pytest

from minitron_deploy.core.errors import MinitronError
from minitron_deploy.distill.api import DistillConfig
from minitron_deploy.pipeline.recipe import load_recipe, packaged_recipe

MINIMAL = "name: r\nteacher: /m\ndata: /d\nheldout: /h\n"


def write(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_demo_recipe_parses_into_api_settings():
    recipe = load_recipe(packaged_recipe("demo"))
    assert recipe.teacher == "builtin:smollm2-135m"
    assert isinstance(recipe.distill, DistillConfig) and recipe.distill.tokens == 81920
    assert recipe.distill.lr == pytest.approx(2e-4) and recipe.prune.target_params == 0.9
    assert "ppl" in recipe.eval.tasks and recipe.eval.pruned_tasks == ["ppl"]


def test_numbers_are_coerced_where_unambiguous(tmp_path):
    recipe = load_recipe(write(tmp_path, MINIMAL + "distill: {tokens: 8.0e4, lr: 1}\n"))
    assert recipe.distill.tokens == 80000 and isinstance(recipe.distill.tokens, int)
    assert recipe.distill.lr == 1.0 and isinstance(recipe.distill.lr, float)


def test_prune_section_is_the_prune_settings(tmp_path):
    from minitron_deploy.core.align import Alignment
    from minitron_deploy.pruning.settings import PruneSettings

    recipe = load_recipe(write(tmp_path, MINIMAL + "prune: {target_params: 0.5, "
                                                   "align: {hidden: 128}, drop_layers: 3-4}\n"))
    assert isinstance(recipe.prune, PruneSettings)
    assert recipe.prune.align == Alignment(128, 64, 1) and recipe.prune.drop_layers == [3, 4]
    assert load_recipe(write(tmp_path, MINIMAL)).prune.prune_settings() == PruneSettings()


def test_overrides_replace_values(tmp_path):
    recipe = load_recipe(write(tmp_path, MINIMAL), {"distill.tokens": 5, "device": "cuda"})
    assert recipe.distill.tokens == 5 and recipe.device == "cuda"


@pytest.mark.parametrize("text,message", [
    (MINIMAL + "distill: {lrr: 1}\n", r"r.yaml.distill: unknown key\(s\) lrr"),
    (MINIMAL + "distill: {tokens: many}\n", r"r.yaml.distill.tokens: .many. is not an integer"),
    (MINIMAL + "prune: {calib_samples: true}\n", r"r.yaml.prune.calib_samples: True is not an integer"),
    (MINIMAL + "eval: {tasks: ppl}\n", r"eval.tasks: expected a list"),
    (MINIMAL + "prune: 3\n", r"prune: expected a mapping"),
    ("name: r\nteacher: /m\n", r"missing required key\(s\) data, heldout"),
    ("name: [unclosed\n", "not valid YAML"),
    (MINIMAL + "colour: blue\n", r"unknown key\(s\) colour"),
    (MINIMAL + "prune: {align: {width: 64}}\n", r"prune.align: unknown key\(s\) width"),
    (MINIMAL + "prune: {align: {ffn: 0}}\n", r"alignment ffn=0 must be a positive integer"),
])
def test_bad_recipes_refused_with_the_key_path(tmp_path, text, message):
    with pytest.raises(MinitronError, match=message):
        load_recipe(write(tmp_path, text))


def test_missing_recipe_file(tmp_path):
    with pytest.raises(MinitronError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")


@pytest.mark.parametrize("name", ["../..", "..", ".", "a/b", "/tmp/x", ".hidden", "", "a b"])
def test_unsafe_names_refused(tmp_path, name):
    with pytest.raises(MinitronError, match="not a safe recipe name"):
        load_recipe(write(tmp_path, MINIMAL.replace("name: r", f"name: '{name}'")))
    with pytest.raises(MinitronError, match="not a safe recipe name"):
        load_recipe(write(tmp_path, MINIMAL), {"name": name})


def test_shipped_recipes_by_name_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no recipes/ here, as after installing the wheel
    for spec in ("demo", "demo.yaml", "recipes/demo.yaml"):
        assert load_recipe(spec).name == "demo"
    (tmp_path / "demo").write_text(MINIMAL)  # an existing file comes first
    assert load_recipe("demo").name == "r"
    with pytest.raises(MinitronError, match="recipe nope does not exist .*shipped recipe: "
                                            ".*demo, llama31-8b-iterative"):
        load_recipe("nope")
    with pytest.raises(MinitronError, match="elsewhere/demo.yaml does not exist"):
        load_recipe("elsewhere/demo.yaml")


def test_compress_names_the_shipped_recipes_when_none_matches(tmp_path, monkeypatch, capsys):
    from minitron_deploy.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["compress", "--recipe", "nope", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "shipped recipe: demo, " in err
    assert not any(tmp_path.iterdir())
