"""``ustack drill``: packetdrill scripts against ustack and against Linux.

This package holds the target-independent front end: the script language
(:mod:`~ustack.drill.parser` -> :mod:`~ustack.drill.ast`) and the packet semantics
shared by both runners (:mod:`~ustack.drill.seqmap`).
"""
from .ast import Script
from .seqmap import InboundIcmp, InboundTcp, SeqMapError, SeqMapper
from .parser import (
    KSFT_IPV4_DEFINES, KSFT_IPV6_DEFINES, DrillSyntaxError, parse_file, parse_script,
    parse_shell,
)

__all__ = [
    "Script", "DrillSyntaxError", "parse_file", "parse_script", "parse_shell",
    "KSFT_IPV4_DEFINES", "KSFT_IPV6_DEFINES",
    "SeqMapper", "SeqMapError", "InboundTcp", "InboundIcmp",
]
