"""Every setting ustack accepts either works or is refused: no silently ignored sysctl."""
from __future__ import annotations

import pathlib

import pytest

from ustack.sysctl import DEFAULTS, UNIMPLEMENTED, Sysctl

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "ustack"


def _sources() -> str:
    return "\n".join(p.read_text() for p in PACKAGE.rglob("*.py") if p.name != "sysctl.py")


def test_every_accepted_setting_is_read_somewhere_or_refused():
    src = _sources()
    unread = sorted(name for name in DEFAULTS
                    if f'"{name}"' not in src and name not in UNIMPLEMENTED)
    assert not unread, f"accepted but never read: {unread}"
    stale = sorted(name for name in UNIMPLEMENTED if f'"{name}"' in src)
    assert not stale, f"read by the code but still listed as not implemented: {stale}"


@pytest.mark.parametrize("name", sorted(UNIMPLEMENTED))
def test_unimplemented_settings_refuse_other_values(name):
    s = Sysctl()
    default = s[name]
    s[name] = default                   # writing what ustack does is fine
    _d, _kind, lo, hi = DEFAULTS[name]
    other = default + 1 if default < hi else default - 1     # valid, but not ustack's
    with pytest.raises(ValueError, match="refused"):
        s[name] = other
    assert s[name] == default
