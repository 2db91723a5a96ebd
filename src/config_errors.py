"""Turn jsonargparse's parse errors into one message that names the key, its config file and line.

jsonargparse reports "Subcommand 'fit' does not accept option 'model.lora_rr'" or
`Parser key "data.batch_size": Expected a <class 'int'>. Got value: four` after ~90 lines of usage,
and never says which of several `--config` files holds the key. The CLI's parser raises
`ConfigurationError` instead (see `src.training.lightning_cli.TutorArgumentParser`), with the message rewritten here:
the file and line where the key is set, what was expected, and the closest accepted key.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
import typing
from collections.abc import Sequence
from pathlib import Path

import yaml

from src.errors import ConfigurationError

_UNKNOWN = re.compile(r"(?:Subcommand|Group) '[^']*' does not accept option '(?P<key>[^']+)'")
_UNRECOGNIZED = re.compile(r"unrecognized arguments: (?P<args>.+)", re.DOTALL)
_BAD_VALUE = re.compile(r'Parser key "(?P<key>[^"]+)":\s*(?P<detail>.+)', re.DOTALL)
_CONFIG_FLAGS = ("--config", "-c")
_MOVED_GROUPS = {
    "lora": ("lora_r:r", "lora_alpha:alpha", "lora_dropout:dropout", "target_modules", "lora_layers:layers",
             "use_rslora", "use_dora", "lora_init:init"),
    "optimizer": ("optimizer:name", "learning_rate", "loraplus_lr_ratio", "weight_decay", "warmup_ratio", "lr_scheduler"),
    "generation": ("max_new_tokens", "wrong_answers_logged"),
    "retention": ("retention_dir:dir", "retention_eval_size:eval_size", "retention_base_size:base_size"),
}
MOVED_KEYS: dict[str, str] = {
    f"model.{old}": f"model.{group}.{new or old}"
    for group, names in _MOVED_GROUPS.items()
    for old, _, new in (name.partition(":") for name in names)
}
"""Flat model keys of earlier configs and the grouped key each became."""


class ConfigParseError(ConfigurationError):
    """A configuration the parser refused: unknown key, wrong type, unreadable config file."""


def readable_parse_error(message: str, args: Sequence[str], sections: dict[str, type]) -> str:
    """The parser's `message` as "<file>:<line>: <key>: <problem>; <fix>".

    `args` are the command-line arguments (config files are read from them); `sections` maps a
    top-level key ("model", "data", "trainer") to the class whose arguments it holds, for suggestions.
    """
    command = _subcommand(args)
    help_hint = f"run `python -m src.cli {command} --help` for the accepted keys" if command else (
        "run `python -m src.cli fit --help` for the accepted keys"
    )
    unknown = _UNKNOWN.search(message)
    if unknown is None and (unrecognized := _UNRECOGNIZED.search(message)):
        flag = next((a for a in unrecognized["args"].split() if a.startswith("--")), None)
        unknown = re.match(r"--(?P<key>[\w.]+)", flag) if flag else None
    if unknown is not None:
        key = unknown["key"]
        if key in MOVED_KEYS:
            return f"{_where(key, args)}: {key} is now {MOVED_KEYS[key]}; rename it (the model's settings are grouped)"
        suggestion = _closest_key(key, sections)
        did_you_mean = f" (did you mean {suggestion}?)" if suggestion else ""
        return f"{_where(key, args)}: unknown key {key}{did_you_mean}; {help_hint}"
    if "Problems parsing config" in message:
        broken = next(filter(None, (_yaml_problem(f) for f in _config_files(args))), None)
        if broken:
            return broken
    bad = _BAD_VALUE.search(message)
    if bad is not None:
        key, detail = bad["key"], _simplify(bad["detail"])
        if key == "config" or (key in sections and "config" in detail.lower()):
            return f"--config: {detail} (relative paths start from {Path.cwd()})"
        if key == "model.optimizer" and "Got value: {" not in bad["detail"]:
            return f"{_where(key, args)}: model.optimizer is a group now: set its name as {MOVED_KEYS[key]}"
        return f"{_where(key, args)}: {key}: {detail}; {help_hint}"
    return f"{_simplify(message)}; {help_hint}"


def _subcommand(args: Sequence[str]) -> str | None:
    return next((a for a in args if a in ("fit", "validate", "test", "predict")), None)


def _where(key: str, args: Sequence[str]) -> str:
    """The last place that sets `key`: `--key` on the command line, or a config file and line."""
    place = "the configuration"
    for i, arg in enumerate(args):
        if arg == f"--{key}" or arg.startswith(f"--{key}="):
            place = f"command line (--{key})"
        config = _config_file(args, i)
        if config is not None:
            line = key_line(config, key)
            if line is not None:
                place = f"{config}:{line}"
    return place


def _config_files(args: Sequence[str]) -> list[str]:
    return [f for f in (_config_file(args, i) for i in range(len(args))) if f is not None]


def _yaml_problem(path: str) -> str | None:
    """"<file>:<line>: invalid YAML: <problem>" when the file does not parse, else None."""
    try:
        yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = f":{mark.line + 1}" if mark else ""
        return f"{path}{line}: invalid YAML: {error.problem or error.context}; fix the syntax (indentation, brackets, quotes)"
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return None


def _config_file(args: Sequence[str], i: int) -> str | None:
    arg = args[i]
    if arg in _CONFIG_FLAGS and i + 1 < len(args):
        return args[i + 1]
    if arg.startswith("--config="):
        return arg.split("=", 1)[1]
    return None


def key_line(path: str | Path, key: str) -> int | None:
    """1-based line of the dotted `key` in a YAML file, or None when the file does not set it."""
    try:
        node = yaml.compose(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    for part in key.split("."):
        if not isinstance(node, yaml.MappingNode):
            return None
        match = next(((k, v) for k, v in node.value if getattr(k, "value", None) == part), None)
        if match is None:
            return None
        key_node, node = match
    return key_node.start_mark.line + 1


def _closest_key(key: str, sections: dict[str, type]) -> str | None:
    """The accepted key nearest to `key`: a section's argument, or a field of a grouped argument."""
    section, _, name = key.partition(".")
    if section not in sections or not name or name.count(".") > 1:
        return None
    group, _, field = name.rpartition(".")
    if group:
        kind = typing.get_type_hints(sections[section].__init__).get(group)
        accepted = [f.name for f in dataclasses.fields(kind)] if dataclasses.is_dataclass(kind) else []
        matches = difflib.get_close_matches(field, accepted, n=1)
        return f"{section}.{group}.{matches[0]}" if matches else None
    accepted = [p for p in inspect.signature(sections[section].__init__).parameters if p not in ("self", "args", "kwargs")]
    moved = [old.partition(".")[2] for old in MOVED_KEYS if old.startswith(f"{section}.")]
    matches = difflib.get_close_matches(name, accepted + moved, n=1)
    if not matches:
        return None
    closest = f"{section}.{matches[0]}"
    return MOVED_KEYS.get(closest, closest)  # a near-miss of an earlier flat key means its grouped key


def _simplify(detail: str) -> str:
    """One line, with Python's type reprs written as a user would: `<class 'int'>` -> int."""
    detail = re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", detail)
    detail = re.sub(r"Expected a typing\.Literal\[(.*?)\]", r"expected one of \1", detail)
    detail = detail.replace("typing.", "")
    detail = re.sub(r"Expected a (\w)", lambda m: f"expected {'an' if m[1] in 'aeiou' else 'a'} {m[1]}", detail)
    detail = detail.replace(". Got value: ", ", got ")
    return " ".join(line.strip() for line in detail.splitlines() if line.strip())
