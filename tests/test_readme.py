"""The README's usage example runs verbatim (in a subprocess, as a user would run it)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.root
REPO = Path(__file__).resolve().parents[1]


def test_readme_example_runs_verbatim(tmp_path):
    text = (REPO / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    script = tmp_path / "example.py"
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "b'hello, ustack'", done.stdout
    assert sum("ESTAB" in line for line in lines) == 2, done.stdout
    assert lines[-1] == "1", done.stdout          # one TIME-WAIT record: ustack closed first
