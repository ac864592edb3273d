"""`ustack ss` and `ustack nstat`: the client side of `ustack serve`'s control socket.

The protocol is one JSON request line and one JSON response line over an AF_UNIX stream socket:

    {"cmd": "ss"}                  -> {"header": "...", "lines": ["...", ...]}
    {"cmd": "nstat", "all": false} -> {"counters": {"TcpExtTW": 3, ...}}
    anything refused or wrong      -> {"error": "..."}

Only the standard library is used here, so the client also runs without ustack's dependencies.
"""
from __future__ import annotations

import json
import socket
import sys
from typing import Any

DEFAULT_PATH = "/run/ustack/ustack.sock"
MAX_LINE = 1 << 24  # a response of many TIME-WAIT records can be large


class ControlError(Exception):
    """The request could not be made or was refused; the message says why."""


def request(path: str, req: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Send one request to the `ustack serve` listening on `path` and return its response."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise ControlError(f"no ustack serve is listening on {path}") from None
        except PermissionError:
            raise ControlError(f"permission denied on {path}: only root may talk to "
                               "ustack serve") from None
        except OSError as e:
            raise ControlError(f"cannot connect to {path}: {e.strerror or e}") from None
        try:
            s.sendall(json.dumps(req).encode() + b"\n")
            buf = bytearray()
            while b"\n" not in buf:
                chunk = s.recv(1 << 16)
                if not chunk:
                    break
                buf += chunk
                if len(buf) > MAX_LINE:
                    raise ControlError(f"response from {path} is too long")
        except socket.timeout:
            raise ControlError(f"ustack serve on {path} did not answer in {timeout:g} s") from None
        except OSError as e:
            raise ControlError(f"talking to {path}: {e.strerror or e}") from None
    finally:
        s.close()
    line = bytes(buf).split(b"\n", 1)[0]
    if not line:
        raise ControlError(f"ustack serve on {path} closed the connection without answering")
    try:
        resp = json.loads(line)
    except ValueError:
        raise ControlError(f"ustack serve on {path} sent something that is not JSON") from None
    if not isinstance(resp, dict):
        raise ControlError(f"ustack serve on {path} sent an unexpected response")
    if "error" in resp:
        raise ControlError(str(resp["error"]))
    return resp


def ss(path: str = DEFAULT_PATH) -> int:
    """Print the running stack's sockets like `ss -tanoe`."""
    try:
        resp = request(path, {"cmd": "ss"})
    except ControlError as e:
        print(f"ustack ss: {e}", file=sys.stderr)
        return 1
    print(resp.get("header", ""))
    for line in resp.get("lines", []):
        print(line)
    return 0


def nstat(path: str = DEFAULT_PATH, all_counters: bool = False) -> int:
    """Print the running stack's counters as `name value` lines, like `nstat` (`-a`: all)."""
    try:
        resp = request(path, {"cmd": "nstat", "all": bool(all_counters)})
    except ControlError as e:
        print(f"ustack nstat: {e}", file=sys.stderr)
        return 1
    counters = resp.get("counters", {})
    print("#kernel")
    for name, value in counters.items():
        print(f"{name:<32} {value}")
    return 0
