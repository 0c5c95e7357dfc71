"""One CLI (issue 12, items 7 and 8): no prefix matching, the shared options defined once and
worded alike in every command, every default written `(default: X)`, and one rule for
integers: left out is the default, 0 is an error in one line."""

from __future__ import annotations

import argparse
import re

import pytest

from bilens.cli import _common, build_parser, main


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def _options(p: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in p._actions if a.option_strings and a.help is not argparse.SUPPRESS
            and not isinstance(a, (argparse._HelpAction, argparse._VersionAction))]


def _one_line(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_shared_options_are_worded_alike_in_every_command():
    """`--device`, `--threads`, `--float64`, `--force`, `--seed`, `--out`: each command's help
    is the one template of `cli/_common.py` (a command may only append a note)."""
    seen: dict[str, list[str]] = {flag: [] for flag in _common.SHARED_HELP}
    for name, p in _subparsers().items():
        for action in _options(p):
            flag = next((f for f in action.option_strings if f in _common.SHARED_HELP), None)
            if flag is None:
                continue
            pattern = _common.template_regex(_common.SHARED_HELP[flag])
            assert re.match(pattern, action.help), (name, flag, action.help)
            seen[flag].append(name)
    assert {"attribute", "verify", "train", "demo", "bench", "compare", "sweep"} <= set(
        seen["--device"]) and set(seen["--device"]) == set(seen["--threads"])
    assert {"attribute", "verify"} <= set(seen["--float64"])
    assert {"attribute", "verify", "train", "decompose", "compare", "demo"} <= set(seen["--force"])
    assert {"attribute", "verify", "train", "decompose"} <= set(seen["--seed"])


def test_every_default_is_written_the_same_way():
    """An option with a default says `(default: X)`; never `(default X)` or `default X`."""
    for name, p in _subparsers().items():
        formatter = p.formatter_class(prog=p.prog)
        for action in _options(p):
            text = formatter._get_help_string(action)
            assert not re.search(r"\(default [^:]|; default ", text), (name, action.dest, text)
            if action.default is not None and action.default is not False:
                assert "(default: " in text, (name, action.dest, text)
        p.format_help()                                   # every help string formats


def test_integer_options_use_one_rule():
    """Every integer option is a count (>= 1, None when left out) or a seed (>= 0); no plain
    `int`, so 0 can never silently mean "use the default"."""
    for name, p in _subparsers().items():
        for action in _options(p):
            assert action.type is not int, (name, action.dest)


@pytest.mark.parametrize("command,flag", sorted(
    (name, a.option_strings[0]) for name, p in _subparsers().items()
    for a in _options(p) if a.type is _common.count))
def test_zero_is_an_error_in_one_line(command, flag, capsys):
    """`compare --n-verify 0`, `demo --seeds 0`, `attribute --n 0`, ...: one message."""
    err = _one_line([command, flag, "0"], capsys)
    assert f"argument {flag}: expected a positive integer, got 0" in err, err


def test_zero_was_the_default_in_demo_and_compare(capsys):
    """The two that used to run their defaults on 0 (issue 12 item 7)."""
    for argv in (["demo", "--seeds", "0"], ["compare", "--n-verify", "0", "--out", "o"],
                 ["compare", "--seeds", "0", "--out", "o"], ["sweep", "depth", "--n-verify", "0",
                                                            "--out", "o"]):
        assert "expected a positive integer, got 0" in _one_line(argv, capsys)


def test_no_prefix_matching(capsys, synthetic_checkpoint, tmp_path):
    """`verify --mode` is refused (it was taken as `--modes`), as is any abbreviation."""
    err = _one_line(["verify", synthetic_checkpoint, "--mode", "frozen", "--out",
                     str(tmp_path / "v")], capsys)
    assert "unrecognized arguments: --mode" in err and "bilens verify --help" in err
    err = _one_line(["train", "--epo", "1"], capsys)
    assert "unrecognized arguments: --epo" in err
    assert not (tmp_path / "v").exists()


def test_attribute_takes_modes_and_its_alias_mode():
    parser = build_parser()
    for flag in ("--modes", "--mode"):
        args = parser.parse_args(["attribute", "ck", flag, "frozen,live", "--out", "a.safetensors"])
        assert args.modes == "frozen,live"
    args = parser.parse_args(["verify", "ck", "--out", "v"])
    assert args.modes is None        # verify's default: every mode of the model's kind (the
                                     # MLP's three, a transformer's four), chosen when it runs


def test_attribute_and_verify_take_device_and_threads(synthetic_checkpoint, tmp_path, capsys):
    out = tmp_path / "a.safetensors"
    assert main(["attribute", synthetic_checkpoint, "--n", "2", "--device", "cpu", "--threads",
                 "1", "--out", str(out)]) == 0
    assert out.is_file()
    assert main(["verify", synthetic_checkpoint, "--n", "2", "--device", "cpu", "--threads", "1",
                 "--no-plots", "--no-progress", "--circuit-ks", "", "--out",
                 str(tmp_path / "v")]) == 0
    capsys.readouterr()


def test_help_says_what_runs():
    """`sweep --help` names three modes; `bench --help`'s `--quick` states BenchConfig.quick."""
    from bilens.experiments.bench import BenchConfig

    sub = _subparsers()
    assert "three attribution modes" in " ".join(sub["sweep"].format_help().split())
    quick = next(a for a in sub["bench"]._actions if "--quick" in a.option_strings)
    cfg = BenchConfig.quick()
    assert f"{cfg.n} inputs" in quick.help and f"{cfg.d_hidden} channels" in quick.help
    assert f"d_model {cfg.d_model}" in quick.help and f"{cfg.repeats} repeats" in quick.help
    n = next(a for a in sub["attribute"]._actions if "--n" in a.option_strings)
    assert "(default: " in sub["attribute"].formatter_class("x")._get_help_string(n)
