"""A setting's flag comes from its field: name, type, help with its default and the presets' values."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

import train
from spermfuse import flags
from spermfuse.core.errors import ConfigError
from spermfuse.training.config import TrainConfig


@dataclasses.dataclass
class Knobs:
    batch_size: int = flags.setting(8, "images per step", "a")
    mean: tuple[float, float, float] | None = flags.setting(None, "input mean", "a")
    channels_last: bool = flags.setting(False, "channels-last", "b")
    clip: float | None = flags.setting(None, "clip", "b", metavar="NORM")
    fold: int = 1  # no flag


PRESETS = {"small": {"batch_size": 32}, "fast": {"batch_size": 32, "channels_last": True}, "same": {"batch_size": 8}}


def parser(**kwargs) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    flags.add_setting_flags(p, Knobs, presets=PRESETS, **kwargs)
    return p


def test_a_flag_takes_its_name_and_type_from_the_field():
    args = parser().parse_args(["--batch-size", "4", "--mean", "0.5", "0.5", "0.25", "--channels-last", "--clip", "2"])
    assert flags.given_settings(args, Knobs) == {
        "batch_size": 4,
        "mean": (0.5, 0.5, 0.25),
        "channels_last": True,
        "clip": 2.0,
    }


def test_an_absent_flag_is_not_a_given_setting():
    assert flags.given_settings(parser().parse_args(["--clip", "1"]), Knobs) == {"clip": 1.0}


def test_a_field_without_a_setting_has_no_flag():
    with pytest.raises(SystemExit):
        parser().parse_args(["--fold", "2"])


def test_the_help_ends_with_the_default_and_each_presets_own_value():
    help_text = " ".join(parser().format_help().split())
    assert "images per step (default 8; small, fast: 32)" in help_text  # 'same' keeps the default: not named
    assert "channels-last (fast: on)" in help_text  # off and None are not shown as defaults


def test_a_prefix_names_the_flags_and_their_destinations():
    args = parser(prefix="knob-").parse_args(["--knob-batch-size", "2"])
    assert args.knob_batch_size == 2
    assert flags.given_settings(args, Knobs, prefix="knob-") == {"batch_size": 2}


def test_every_training_setting_is_a_flag_of_train_py_or_set_by_the_program():
    parsed = vars(train.parse_args([]))
    without_flag = {f.name for f in dataclasses.fields(TrainConfig)} - set(parsed)
    assert without_flag == {"test_fraction", "pad_color"}  # fold and resume are train.py's own flags
    assert all(
        parsed[f.name] is None
        for f in dataclasses.fields(TrainConfig)
        if f.name not in {"fold", "resume"} | without_flag
    )


@dataclasses.dataclass
class Promise:
    accuracy: float | None = flags.setting(None, "the promise", "p")
    delta: float = flags.setting(0.1, "its failure probability", "p")


def promise(argv: list[str]):
    p = argparse.ArgumentParser()
    flags.add_setting_flags(p, Promise, prefix="refer-")
    return flags.requested(p.parse_args(argv), Promise, "refer-", "accuracy")


def test_a_request_is_built_only_when_its_key_flag_is_given():
    assert promise([]) is None
    assert promise(["--refer-accuracy", "0.9"]) == Promise(0.9, 0.1)
    assert promise(["--refer-accuracy", "0.9", "--refer-delta", "0.05"]) == Promise(0.9, 0.05)


def test_a_refining_flag_without_its_request_is_refused_not_ignored():
    with pytest.raises(ConfigError, match="--refer-delta refines --refer-accuracy: give --refer-accuracy too"):
        promise(["--refer-delta", "0.05"])


def test_an_option_other_than_the_field_name_names_the_flag_and_its_destination():
    @dataclasses.dataclass
    class Samples:
        normal_class: str = flags.setting("Normal", "the class of normal forms", "s", option="--normal-label")

    p = argparse.ArgumentParser()
    flags.add_setting_flags(p, Samples)
    assert flags.given_settings(p.parse_args(["--normal-label", "N"]), Samples) == {"normal_class": "N"}
