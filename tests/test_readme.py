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


def test_readme_library_example_runs_verbatim(tmp_path):
    """The second example (aiohttp and httpx on two in-memory stacks) runs as written."""
    text = (REPO / "README.md").read_text()
    code = re.findall(r"```python\n(.*?)```", text, re.S)[1]
    script = tmp_path / "libraries.py"
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["200 hello 198.18.0.2"], done.stdout


def test_readme_lists_every_setting():
    """The settings table names every sysctl ustack accepts, and nothing it does not."""
    from ustack.sysctl import DEFAULTS
    text = (REPO / "README.md").read_text()
    section = text.split("## Settings", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `([a-z0-9_.]+)` \|", section, re.M))
    assert listed == set(DEFAULTS), (set(DEFAULTS) - listed, listed - set(DEFAULTS))
