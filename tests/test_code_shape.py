"""The shape of the code that CONTRIBUTING asks for, checked: modules of a livable size, and the public API typed
(mypy checks the types in .ci/run; this checks that none of the public functions it covers goes unannotated)."""

import ast
import glob
import os

import pytest
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = sorted(
    f
    for pattern in ("fastpggan/**/*.py", "kernels/**/*.py", "benchmarks/*.py", "tests/*.py", "setup.py")
    for f in glob.glob(os.path.join(ROOT, pattern), recursive=True)
)
MAX_MODULE_LINES, MAX_CLASS_LINES = 400, 250


def _rel(path):
    return os.path.relpath(path, ROOT)


@pytest.mark.parametrize("path", SOURCES, ids=_rel)
def test_modules_and_classes_are_of_a_livable_size(path):
    text = open(path).read()
    assert text.count("\n") <= MAX_MODULE_LINES, f"{_rel(path)} has {text.count(chr(10))} lines"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ClassDef):
            lines = node.end_lineno - node.lineno + 1
            assert lines <= MAX_CLASS_LINES, f"class {node.name} of {_rel(path)} has {lines} lines"


def _typed_files():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        listed = tomllib.load(f)["tool"]["mypy"]["files"]
    out = []
    for entry in listed:
        full = os.path.join(ROOT, entry)
        out += sorted(glob.glob(os.path.join(full, "*.py"))) if os.path.isdir(full) else [full]
    return [f for f in out if not os.path.basename(f).startswith("_") or f.endswith("__init__.py")]


def unannotated_public_functions(source: str):
    """'name' of every public function or method (outside private classes) lacking a parameter or return
    annotation; self/cls and __init__'s return are exempt."""
    missing = []

    def visit(node, private, prefix):
        for n in ast.iter_child_nodes(node):
            if isinstance(n, ast.ClassDef):
                visit(n, private or n.name.startswith("_"), f"{prefix}{n.name}.")
            elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if private or (n.name.startswith("_") and not n.name.startswith("__")):
                    continue
                a = n.args
                params = a.posonlyargs + a.args + a.kwonlyargs + [p for p in (a.vararg, a.kwarg) if p]
                untyped = [p.arg for p in params if p.annotation is None and p.arg not in ("self", "cls")]
                if untyped or (n.returns is None and n.name != "__init__"):
                    missing.append(f"{prefix}{n.name}")

    visit(ast.parse(source), False, "")
    return missing


@pytest.mark.parametrize("path", _typed_files(), ids=_rel)
def test_the_public_api_is_annotated(path):
    assert unannotated_public_functions(open(path).read()) == []


def test_the_annotation_check_finds_what_it_should():
    src = "def f(x): ...\ndef g(x: int) -> int: ...\ndef _h(x): ...\nclass C:\n    def m(self, y) -> None: ...\n"
    assert unannotated_public_functions(src) == ["f", "C.m"]
