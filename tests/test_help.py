"""Every command's --help says each flag's default once, and none where there is none (issue 44)."""

import argparse
import importlib
import re

import pytest

COMMANDS = ["train_args", "generate", "evaluate", "export", "convert", "tune", "selftest", "dataset"]


@pytest.mark.parametrize("module", COMMANDS)
def test_each_default_is_said_once(module):
    parser = importlib.import_module(f"fastpggan.{module}").build_parser()
    subcommands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]  # dataset's
    texts = [parser.format_help()] + [p.format_help() for a in subcommands for p in a.choices.values()]
    for text in texts:
        flat = " ".join(text.split())
        assert "(default: None)" not in flat and "(default: False)" not in flat
        for entry in re.split(r"\s(?=--?[a-z])", flat):
            assert entry.lower().count("default") <= 1, entry
