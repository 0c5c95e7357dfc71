"""The docstring examples of every module of `src/bilens` run as part of the suite.

Each example builds what it needs (a tiny `BilinearNet`, random inputs); only those that
need files on disk (checkpoints, datasets, output directories) carry `# doctest: +SKIP`.
A module that needs Triton is skipped where Triton is not installed.
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import pkgutil

import pytest
import torch

import bilens

NEEDS_TRITON = {"bilens.ablation._engine.triton_ops"}
NOT_IMPORTABLE = {"bilens.__main__"}           # runs the CLI on import
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _modules() -> list[str]:
    """Every module whose source holds an example (read, not imported, at collection)."""
    names = ["bilens"] + [m.name for m in pkgutil.walk_packages(bilens.__path__, "bilens.")]
    with_examples = []
    for name in sorted(set(names) - NOT_IMPORTABLE):
        origin = importlib.util.find_spec(name).origin
        with open(origin, encoding="utf-8") as source:
            if ">>>" in source.read():
                with_examples.append(name)
    return with_examples


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples(name):
    if name in NEEDS_TRITON and importlib.util.find_spec("triton") is None:
        pytest.skip("needs Triton (./setup.sh --dev installs it; CUDA builds of torch ship it)")
    module = importlib.import_module(name)
    tests = [t for t in doctest.DocTestFinder(exclude_empty=True).find(module, name)
             if t.examples]
    report: list[str] = []
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    for test in tests:
        torch.manual_seed(0)                    # examples draw random models and inputs
        runner.run(test, out=report.append)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, "".join(report)
