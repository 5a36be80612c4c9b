"""A setting's command-line flag, declared once beside the setting.

A settings dataclass (``config.TrainConfig``, ``slurm.SlurmSettings``) declares each field that a
program takes as a flag with :func:`setting`: its default, one line of help and the flag's
section of ``--help``. :func:`add_setting_flags` builds the flags from those fields: the name
(``grad_clip`` -> ``--grad-clip``), the type from the field's annotation, and a help line that
ends with the default and with what each preset changes, so ``--help`` cannot disagree with the
values the run will use. Every flag defaults to None: :func:`given_settings` returns only the
settings given on the command line, so an absent flag never overrides a preset.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Mapping

from .core.errors import ConfigError

_HELP, _SECTION, _OPTION, _FLAG = "help", "section", "option", "flag"


def setting(default: Any, help: str, section: str, option: str | None = None, **flag: Any) -> Any:
    """A dataclass field that is also a flag: ``help`` (the default and the presets' values are
    appended), the ``section`` of --help it is listed under, the ``option`` when its name is not
    the field's (``--normal-class``), and argparse's ``choices``, ``metavar``, ``nargs`` or
    ``const`` in ``flag``."""
    metadata = {_HELP: help, _SECTION: section, _OPTION: option, _FLAG: flag}
    return dataclasses.field(default=default, metadata=metadata)


def _option(field: dataclasses.Field, prefix: str) -> str:
    return field.metadata[_OPTION] or f"--{prefix}{field.name.replace('_', '-')}"


def _destination(field: dataclasses.Field, prefix: str) -> str:
    return _option(field, prefix).removeprefix("--").replace("-", "_")


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return " ".join(_value(v) for v in value)
    return str(value)


def _defaults_note(name: str, default: Any, presets: Mapping[str, Mapping[str, Any]]) -> str:
    """'default 240; paper_b: 224; demo, demo_scratch: 64': the default (when not None or off)
    and each preset's own value, presets with one value named together."""
    by_value: dict[str, list[str]] = {}
    for preset, values in presets.items():
        if name in values and values[name] != default:
            by_value.setdefault(_value(values[name]), []).append(preset)
    changes = [f"{', '.join(names)}: {value}" for value, names in by_value.items()]
    shown = [] if default is None or default is False else [f"default {_value(default)}"]
    return "; ".join(shown + changes)


def _argument_type(hint: Any) -> dict[str, Any]:
    """argparse's ``type``/``nargs``/``action`` for an annotation (``X | None`` as ``X``)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    if hint is bool:
        return {"action": "store_true"}
    if typing.get_origin(hint) is tuple:
        items = typing.get_args(hint)  # (X, ...): one or more; (X, X, X): exactly three
        return {"type": items[0], "nargs": "+" if items[-1] is Ellipsis else len(items)}
    return {"type": hint}


def add_setting_flags(
    parser: argparse.ArgumentParser,
    settings: type,
    sections: Mapping[str, Any] | None = None,
    presets: Mapping[str, Mapping[str, Any]] | None = None,
    prefix: str = "",
) -> None:
    """A flag ``--<prefix><field-name>`` for every :func:`setting` field of the ``settings``
    dataclass, in ``sections[section]`` (an argument group) or else in ``parser``."""
    hints = typing.get_type_hints(settings)
    for field in dataclasses.fields(settings):
        if _HELP not in field.metadata:
            continue  # a setting without a flag (set by the program, or by a preset only)
        note = _defaults_note(field.name, field.default, presets or {})
        help_text = field.metadata[_HELP] + (f" ({note})" if note else "")
        arguments = {**_argument_type(hints[field.name]), **field.metadata[_FLAG]}
        group = (sections or {}).get(field.metadata[_SECTION], parser)
        group.add_argument(
            _option(field, prefix),
            dest=_destination(field, prefix),
            default=None,
            help=help_text.replace("%", "%%"),
            **arguments,
        )


def given_settings(args: argparse.Namespace, settings: type, prefix: str = "") -> dict[str, Any]:
    """The ``settings`` fields whose flags were given (not None), by field name; a flag of
    several values as the field's tuple."""
    given = {
        field.name: getattr(args, _destination(field, prefix))
        for field in dataclasses.fields(settings)
        if _HELP in field.metadata and getattr(args, _destination(field, prefix), None) is not None
    }
    return {name: tuple(value) if isinstance(value, list) else value for name, value in given.items()}  # nargs


def refuse_unless(asked: bool, args: argparse.Namespace, settings: type, needed: str, prefix: str = "") -> None:
    """Refuse the ``settings``' flags, in one line, when ``needed`` (the flag they refine) was not
    given (``asked`` False): a refinement of nothing is a mistake, not a no-op."""
    given = given_settings(args, settings, prefix)
    if given and not asked:
        field = next(f for f in dataclasses.fields(settings) if f.name in given)
        option = _option(field, prefix)
        raise ConfigError(f"{option} refines {needed}: give {needed} too, or leave {option} out")


def requested(args: argparse.Namespace, settings: type, prefix: str, key: str) -> Any:
    """The ``settings`` from their flags when ``--<prefix><key>`` was given (the request, e.g.
    ``--refer-accuracy``), else None; its other flags alone are refused, not ignored."""
    given = given_settings(args, settings, prefix)
    key_option = _option(next(f for f in dataclasses.fields(settings) if f.name == key), prefix)
    refuse_unless(key in given, args, settings, key_option, prefix)
    return settings(**given) if given else None
