"""Argument groups shared by several subcommands."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

from ..arch.modeling import DTYPES
from ..core.errors import MinitronError
from ..core.precision import check_device
from ..core.schema import Field, Schema, fields_of
from ..importance.settings import ScoringSettings

T = TypeVar("T")
S = TypeVar("S", bound=Schema)
#: Help of every ``--device`` flag.
DEVICE_HELP = "auto (CUDA when a GPU is visible, else the CPU), cpu, cuda or cuda:N"


def checked(parse: Callable[[str], T]) -> Callable[[str], T]:
    """``parse`` as an argparse ``type=``: its MinitronError becomes the usage error."""
    def convert(text: str) -> T:
        try:
            return parse(text)
        except MinitronError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    convert.__name__ = parse.__name__
    return convert


def add_input_args(p: argparse.ArgumentParser) -> None:
    """The model and its calibration data (``prune`` and ``score``)."""
    p.add_argument("--model", required=True,
                   help="checkpoint folder, or Hugging Face Hub id org/name[@rev]")
    p.add_argument("--calib", help="calibration text: save_to_disk folder, .txt/.jsonl/.parquet "
                                   "file, or a folder of them (no default: prune needs it "
                                   "unless --scores is given)")


def add_calibration_args(p: argparse.ArgumentParser) -> None:
    """Model, calibration data, importance settings and device (``score``, ``search``)."""
    add_input_args(p)
    add_settings_args(p, ScoringSettings)
    add_device_args(p)


class _SettingAction(argparse.Action):
    """Stores a flag's text converted and checked by its schema field: a bad value raises the
    schema's MinitronError, the same line a recipe or an API caller gets."""

    def __init__(self, *args, field: Field, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.field = field

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, self.field.parse(values))


def add_settings_args(p: argparse.ArgumentParser, schema: type[Schema]) -> None:
    """One flag per setting of ``schema`` (``--name-with-dashes``), its help and default read
    off the schema."""
    for f in fields_of(schema):
        flag, choices = f"--{f.name.replace('_', '-')}", f.setting.choices
        text = f"{f.setting.help} (default: {f.default_text()})".replace("%", "%%")
        if f.kind is bool:
            p.add_argument(flag, dest=f.name, default=f.default,
                           action=argparse.BooleanOptionalAction, help=text)
            continue
        p.add_argument(flag, dest=f.name, default=f.default, action=_SettingAction, field=f,
                       metavar="{" + ",".join(choices) + "}" if choices else None, help=text)


def settings_from_args(schema: type[S], args: argparse.Namespace) -> S:
    """The settings of ``schema`` from parsed flags."""
    return schema.make(**{f.name: getattr(args, f.name) for f in fields_of(schema)})


def add_device_args(p: argparse.ArgumentParser, dtype_default: str = "auto") -> None:
    """``--device`` and ``--dtype``."""
    p.add_argument("--device", default="auto", type=check_device, help=DEVICE_HELP)
    p.add_argument("--dtype", choices=["auto", *sorted(DTYPES)], default=dtype_default,
                   help="auto (default): bf16 where it is faster on the device (GPUs; CPUs "
                        "measured once, e.g. with AMX), else fp32")


def scoring_settings(args: argparse.Namespace) -> ScoringSettings:
    """ScoringSettings from the calibration argument group."""
    return settings_from_args(ScoringSettings, args)
