"""Header prediction in C (ext/_fastpath.pyx): the translation of ustack.tcp.fastpath."""
from typing import Any

def rcv_established(conn: Any, seg: Any) -> bool:
    """True when header prediction took the segment; False (nothing changed) otherwise."""
