"""The repository tests itself alone: the official fixtures are in tests/fixtures/official, byte for byte as its
README lists them, and no code, test, conftest or CI script reads the project's shared folder beside the checkout.

"Reads" means a path in code: a string literal that is not a docstring, an os.path.join / Path / `/` that puts
"shared" after "..", or a shell line that is not a comment. A docstring or comment that names the folder as the
origin of something is not a read.
"""

import ast
import hashlib
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "official")
SHARED_PATH = re.compile(
    r"(^|[/\\])\.\.[/\\]+(\.\.[/\\]+)*shared([/\\]|$)"
    r"|shared[/\\]+(fixtures|peers|tools|REFERENCE)"
)
PATH_CALLS = {"join", "Path", "PurePath", "joinpath", "open", "abspath", "normpath", "realpath"}


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the Constant nodes that are docstrings."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            value = first.value if isinstance(first, ast.Expr) else None
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                out.add(id(value))
    return out


def _call_name(func: ast.AST) -> str:
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def python_reads(source: str) -> list[str]:
    """Line-numbered descriptions of every place in `source` that builds a path into the shared folder."""
    tree = ast.parse(source)
    docs = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            if SHARED_PATH.search(node.value):
                found.append(f"line {node.lineno}: {node.value!r}")
        elif isinstance(node, ast.Call) and _call_name(node.func) in PATH_CALLS:
            parts = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            if "shared" in parts and ".." in parts:
                found.append(f"line {node.lineno}: {_call_name(node.func)}(... '..', ... 'shared' ...)")
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            if isinstance(node.right, ast.Constant) and node.right.value == "shared":
                found.append(f"line {node.lineno}: ... / 'shared'")
    return found


def shell_reads(text: str) -> list[str]:
    """Line-numbered non-comment lines of a shell or config file that name a path into the shared folder."""
    found = []
    for n, line in enumerate(text.splitlines(), 1):
        code = line.split("#", 1)[0] if not line.lstrip().startswith("#!") else ""
        if SHARED_PATH.search(code):
            found.append(f"line {n}: {line.strip()}")
    return found


def _repo_files():
    skip = {".git", "build", "dist", "__pycache__", ".pytest_cache", ".benchmarks", "fixtures"}
    for top, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in skip and not d.endswith(".egg-info")]
        for f in files:
            yield os.path.join(top, f)


def test_no_code_reads_the_shared_folder():
    offenders = []
    for path in _repo_files():
        rel = os.path.relpath(path, ROOT)
        if path.endswith(".py"):
            with open(path, encoding="utf-8") as fh:
                hits = python_reads(fh.read())
        elif path.endswith((".sh", ".toml", ".cfg", ".ini", ".yaml", ".yml")) or rel == os.path.join(".ci", "run"):
            with open(path, encoding="utf-8") as fh:
                hits = shell_reads(fh.read())
        else:
            continue
        offenders += [f"{rel} {h}" for h in hits]
    assert not offenders, "reads outside the repository:\n" + "\n".join(offenders)


# The samples below name the folder as ".." + "/shared" only when run, so that this file passes its own scan.
UP_SHARED = "".join(["..", "/sha", "red"])


@pytest.mark.parametrize(
    "source",
    [
        'OFFICIAL = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "fixtures", "official")',
        'p = "UP/fixtures/official/x.pkl"',
        'p = Path(__file__).parent.parent / "shared"',
        'def f():\n    """Doc."""\n    return np.load("../UP/peers/t.json")',
        'x = f"{root}/sha" "red/fixtures/official"',
    ],
)
def test_scanner_sees_a_read(source):
    assert python_reads(source.replace("UP", UP_SHARED))


@pytest.mark.parametrize(
    "source",
    [
        '"""Copied from UP/fixtures/official."""',
        'def f():\n    """Run python UP/peers/progan_step.py."""\n    # UP/tools/guarded\n    return 1',
        'state["shared"] = {"step": 0}',
        'OFFICIAL = os.path.join(os.path.dirname(__file__), "fixtures", "official")',
    ],
)
def test_scanner_ignores_docs_and_other_uses(source):
    assert python_reads(source.replace("UP", UP_SHARED)) == []


def test_shell_scanner():
    assert shell_reads(f"cp {UP_SHARED}/fixtures/official/x.pkl tests/\n")
    assert shell_reads(f"# copied from {UP_SHARED}/fixtures\npython -m pytest tests/\n") == []


def _listed():
    with open(os.path.join(FIXTURES, "README.md"), encoding="utf-8") as fh:
        rows = re.findall(r"^\| `([^`]+)` \| (\d+) \| `([0-9a-f]{64})` \|$", fh.read(), re.M)
    return {name: (int(size), digest) for name, size, digest in rows}


def test_official_fixtures_match_their_readme():
    listed = _listed()
    present = {
        os.path.relpath(p, FIXTURES).replace(os.sep, "/")
        for p in (os.path.join(t, f) for t, _, fs in os.walk(FIXTURES) for f in fs)
    } - {"README.md"}
    assert len(listed) >= 14 and set(listed) == present, sorted(set(listed) ^ present)
    for name, (size, digest) in listed.items():
        with open(os.path.join(FIXTURES, name), "rb") as fh:
            data = fh.read()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (size, digest), name
