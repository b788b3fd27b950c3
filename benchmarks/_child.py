"""What the stand-alone benchmark scripts (compiled_settings.py, compiled_step.py) share: a measurement in a fresh
child process that prints one `RESULT <json>` line, and the commit the figures came from."""

import json
import os
import subprocess
import sys
from typing import Any, Dict, List, Optional

_HERE = os.path.dirname(os.path.abspath(__file__))


def run(cmd: List[str], what: str, env: Optional[Dict[str, str]] = None) -> Any:
    """Run `cmd` (python and its arguments); -> the JSON of its `RESULT ` line, or exit naming `what` with the
    child's stderr."""
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    line = next((x for x in r.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        sys.exit(f"{what} failed:\n{r.stderr[-3000:]}")
    return json.loads(line[len("RESULT ") :])


def result(value: Any) -> None:
    """The child's side: print `value` as the RESULT line."""
    print("RESULT " + json.dumps(value), flush=True)


def commit() -> str:
    """The short hash of HEAD of this checkout, or 'unknown'."""
    return (
        subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=_HERE
        ).stdout.strip()
        or "unknown"
    )


def write_text(path: Optional[str], text: str) -> None:
    """`text` to stdout, or to `path` whole or not at all (a temporary file beside it, renamed into place)."""
    if not path:
        sys.stdout.write(text)
        return
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
