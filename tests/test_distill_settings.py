"""Distillation settings are one schema: ``minitron distill``'s flags, the recipe's ``distill``
section and ``DistillConfig`` are read off it and give the same one-line errors."""

import pytest
from surfaces import recipe_refusal, subparser

from minitron_deploy.cli import HelpFormatter, main
from minitron_deploy.commands.common import settings_from_args
from minitron_deploy.core.errors import MinitronError
from minitron_deploy.core.schema import fields_of
from minitron_deploy.distill.api import DistillConfig

#: (setting, value as typed on the command line, as written in YAML / Python, the error)
BAD = [
    ("tokens", "many", "many", "tokens: 'many' is not an integer"),
    ("lr", "-1", -1, "lr: -1.0 must be positive"),
    ("lm_loss_weight", "1.5", 1.5, "lm_loss_weight: 1.5 must be in [0, 1]"),
    ("strategy", "zero3", "zero3", "strategy: 'zero3' is not one of auto, single, ddp, fsdp"),
    ("intermediate_loss", "kl", "kl", "intermediate_loss: 'kl' is not one of cosine, mse"),
    ("val_fraction", "1", 1, "val_fraction: 1.0 must be in [0, 1)"),
    ("device", "gpu", "gpu", "device: 'gpu' is not auto, cpu, cuda or cuda:N"),
]


@pytest.mark.parametrize("name, text, value, message", BAD)
def test_a_bad_value_gets_the_same_line_on_every_surface(tmp_path, capsys, name, text, value,
                                                         message):
    args = ["distill", "--teacher", str(tmp_path / "t"), "--student", str(tmp_path / "s"),
            "--data", str(tmp_path / "d.txt"), "--out", str(tmp_path / "o")]
    assert main([*args, f"--{name.replace('_', '-')}", text]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"minitron: error: {message}"]
    assert not (tmp_path / "o").exists()

    assert recipe_refusal(tmp_path, "distill", {name: value}) == f"r.yaml.distill.{message}"

    with pytest.raises(MinitronError) as err:
        DistillConfig(**{name: value})
    assert str(err.value) == message


def test_every_setting_is_a_flag_and_a_recipe_key():
    formatter = HelpFormatter(prog="minitron")
    actions = {a.dest: a for a in subparser("distill")._actions}
    for f in fields_of(DistillConfig):
        action = actions[f.name]
        assert action.option_strings[0] == f"--{f.name.replace('_', '-')}"
        help_text = formatter._get_help_string(action) % {"default": f.default}
        assert f.setting.help in help_text and f"(default: {f.default_text()})" in help_text
    assert DistillConfig.from_mapping(DistillConfig().record(), "r.yaml.distill") == \
        DistillConfig()


def test_flags_become_the_same_settings_as_the_api():
    parsed = subparser("distill").parse_args(
        ["--teacher", "t", "--student", "s", "--data", "d", "--out", "o", "--tokens", "2e6",
         "--activation-checkpointing", "--intermediate-loss", "mse", "--seq-len", "1024"])
    assert settings_from_args(DistillConfig, parsed) == DistillConfig(
        tokens=2_000_000, activation_checkpointing=True, intermediate_loss="mse", seq_len=1024)
    default = subparser("distill").parse_args(["--teacher", "t", "--student", "s", "--data",
                                                "d", "--out", "o", "--steps", "4"])
    assert settings_from_args(DistillConfig, default) == DistillConfig(steps=4)


def test_a_budget_of_both_or_neither_is_refused_in_one_line(tmp_path, capsys):
    args = ["distill", "--teacher", str(tmp_path / "t"), "--student", str(tmp_path / "s"),
            "--data", str(tmp_path / "d.txt"), "--out", str(tmp_path / "o")]
    for budget in ([], ["--tokens", "1000", "--steps", "2"]):
        with pytest.raises(MinitronError, match="give exactly one of --tokens and --steps"):
            DistillConfig(**dict(zip(("tokens", "steps"), map(int, budget[1::2])))) \
                .train_config(world=1)
        assert main([*args, *budget]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
