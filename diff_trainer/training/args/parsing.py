"""A yaml/json config file followed by command-line flags, parsed into the argument dataclasses."""

import json
import os
import sys

import yaml
from transformers import HfArgumentParser

from ..runner import first_to_report

USAGE = "%(prog)s [config.yaml|config.json] [--flag value ...]   (--help lists the flags)"


class ArgumentParser(HfArgumentParser):
    """HfArgumentParser with a one-line usage (the full one lists every flag); in a distributed launch a usage error
    is printed by the first process that hits it, and every process exits with status 2."""

    def error(self, message: str):
        if not first_to_report():
            sys.exit(2)
        super().error(message)


def config_to_argv(path: str) -> list[str]:
    """Turn a yaml/json config file into CLI-style arguments (so that later CLI flags override them)."""
    with open(path, encoding="utf-8") as handle:
        values = json.load(handle) if path.endswith(".json") else yaml.safe_load(handle)
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a config file must hold a mapping of flag names to values.")
    argv = []
    for key, value in values.items():
        if value is None:
            continue
        argv.append(f"--{key}")
        if isinstance(value, (list, tuple)):
            argv.extend(str(v) for v in value)
        elif isinstance(value, bool):
            argv.append(str(value).lower())
        elif isinstance(value, dict):
            argv.append(json.dumps(value))
        else:
            argv.append(str(value))
    return argv


def parse_arguments(dataclass_types, argv: list[str] | None = None):
    """Parse `[config.yaml|config.json] [--flag value ...]`; flags on the command line win over the file."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = ArgumentParser(dataclass_types, usage=USAGE)
    if argv and not argv[0].startswith("-") and argv[0].endswith((".yaml", ".yml", ".json")):
        if not os.path.isfile(argv[0]):
            parser.error(f"config file {argv[0]} does not exist.")
        try:
            argv = config_to_argv(argv[0]) + argv[1:]
        except (ValueError, yaml.YAMLError) as error:  # json.JSONDecodeError is a ValueError
            parser.error(f"{argv[0]}: not a valid config file: {' '.join(str(error).split())}")
    try:
        *parsed, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    except ValueError as error:  # a flag check in a __post_init__: a usage error (exit status 2), not a traceback
        parser.error(str(error))
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")  # usage message and exit status 2
    return tuple(parsed)
