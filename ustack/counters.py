"""Counters with Linux's names (the MIBs of /proc/net/snmp and /proc/net/netstat).

Every counter is stored under its `nstat` name: the group followed by the field, as in
``TcpExtTW``, ``TcpInCsumErrors``, ``IpInHdrErrors``.  Lookups also accept the bare field name
as it appears in /proc/net/netstat (``TW``, ``TCPAbortOnClose``); a bare name that several
groups share resolves in the order TcpExt, Tcp, Ip, IpExt, Icmp (so ``InCsumErrors`` is TCP's).

The protocol core increments the plain dict ``Counters.values`` directly with nstat names: a
dict increment is the cheapest thing the per-segment path can do.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping

# Field names as Linux 6.18 prints them (read off /proc/net/{snmp,netstat} of the test machine).
LINUX_MIB: dict[str, tuple[str, ...]] = {
    'Ip': (
        'InReceives', 'InHdrErrors', 'InAddrErrors', 'ForwDatagrams', 'InUnknownProtos',
        'InDiscards', 'InDelivers', 'OutRequests', 'OutDiscards', 'OutNoRoutes', 'ReasmTimeout',
        'ReasmReqds', 'ReasmOKs', 'ReasmFails', 'FragOKs', 'FragFails', 'FragCreates',
        'OutTransmits',
    ),
    'Icmp': (
        'InMsgs', 'InErrors', 'InCsumErrors', 'InDestUnreachs', 'InTimeExcds', 'InParmProbs',
        'InSrcQuenchs', 'InRedirects', 'InEchos', 'InEchoReps', 'InTimestamps',
        'InTimestampReps', 'InAddrMasks', 'InAddrMaskReps', 'OutMsgs', 'OutErrors',
        'OutRateLimitGlobal', 'OutRateLimitHost', 'OutDestUnreachs', 'OutTimeExcds',
        'OutParmProbs', 'OutSrcQuenchs', 'OutRedirects', 'OutEchos', 'OutEchoReps',
        'OutTimestamps', 'OutTimestampReps', 'OutAddrMasks', 'OutAddrMaskReps',
    ),
    'Tcp': (
        'ActiveOpens', 'PassiveOpens', 'AttemptFails', 'EstabResets', 'CurrEstab', 'InSegs',
        'OutSegs', 'RetransSegs', 'InErrs', 'OutRsts', 'InCsumErrors',
    ),
    'TcpExt': (
        'SyncookiesSent', 'SyncookiesRecv', 'SyncookiesFailed', 'EmbryonicRsts', 'PruneCalled',
        'RcvPruned', 'OfoPruned', 'OutOfWindowIcmps', 'LockDroppedIcmps', 'ArpFilter', 'TW',
        'TWRecycled', 'TWKilled', 'PAWSActive', 'PAWSEstab', 'BeyondWindow', 'TSEcrRejected',
        'PAWSOldAck', 'PAWSTimewait', 'DelayedACKs', 'DelayedACKLocked', 'DelayedACKLost',
        'ListenOverflows', 'ListenDrops', 'TCPHPHits', 'TCPPureAcks', 'TCPHPAcks',
        'TCPRenoRecovery', 'TCPSackRecovery', 'TCPSACKReneging', 'TCPSACKReorder',
        'TCPRenoReorder', 'TCPTSReorder', 'TCPFullUndo', 'TCPPartialUndo', 'TCPDSACKUndo',
        'TCPLossUndo', 'TCPLostRetransmit', 'TCPRenoFailures', 'TCPSackFailures',
        'TCPLossFailures', 'TCPFastRetrans', 'TCPSlowStartRetrans', 'TCPTimeouts',
        'TCPLossProbes', 'TCPLossProbeRecovery', 'TCPRenoRecoveryFail', 'TCPSackRecoveryFail',
        'TCPRcvCollapsed', 'TCPBacklogCoalesce', 'TCPDSACKOldSent', 'TCPDSACKOfoSent',
        'TCPDSACKRecv', 'TCPDSACKOfoRecv', 'TCPAbortOnData', 'TCPAbortOnClose',
        'TCPAbortOnMemory', 'TCPAbortOnTimeout', 'TCPAbortOnLinger', 'TCPAbortFailed',
        'TCPMemoryPressures', 'TCPMemoryPressuresChrono', 'TCPSACKDiscard', 'TCPDSACKIgnoredOld',
        'TCPDSACKIgnoredNoUndo', 'TCPSpuriousRTOs', 'TCPMD5NotFound', 'TCPMD5Unexpected',
        'TCPMD5Failure', 'TCPSackShifted', 'TCPSackMerged', 'TCPSackShiftFallback',
        'TCPBacklogDrop', 'PFMemallocDrop', 'TCPMinTTLDrop', 'TCPDeferAcceptDrop',
        'IPReversePathFilter', 'TCPTimeWaitOverflow', 'TCPReqQFullDoCookies', 'TCPReqQFullDrop',
        'TCPRetransFail', 'TCPRcvCoalesce', 'TCPOFOQueue', 'TCPOFODrop', 'TCPOFOMerge',
        'TCPChallengeACK', 'TCPSYNChallenge', 'TCPFastOpenActive', 'TCPFastOpenActiveFail',
        'TCPFastOpenPassive', 'TCPFastOpenPassiveFail', 'TCPFastOpenListenOverflow',
        'TCPFastOpenCookieReqd', 'TCPFastOpenBlackhole', 'TCPSpuriousRtxHostQueues',
        'BusyPollRxPackets', 'TCPAutoCorking', 'TCPFromZeroWindowAdv', 'TCPToZeroWindowAdv',
        'TCPWantZeroWindowAdv', 'TCPSynRetrans', 'TCPOrigDataSent', 'TCPHystartTrainDetect',
        'TCPHystartTrainCwnd', 'TCPHystartDelayDetect', 'TCPHystartDelayCwnd',
        'TCPACKSkippedSynRecv', 'TCPACKSkippedPAWS', 'TCPACKSkippedSeq', 'TCPACKSkippedFinWait2',
        'TCPACKSkippedTimeWait', 'TCPACKSkippedChallenge', 'TCPWinProbe', 'TCPKeepAlive',
        'TCPMTUPFail', 'TCPMTUPSuccess', 'TCPDelivered', 'TCPDeliveredCE', 'TCPAckCompressed',
        'TCPZeroWindowDrop', 'TCPRcvQDrop', 'TCPWqueueTooBig', 'TCPFastOpenPassiveAltKey',
        'TcpTimeoutRehash', 'TcpDuplicateDataRehash', 'TCPDSACKRecvSegs',
        'TCPDSACKIgnoredDubious', 'TCPMigrateReqSuccess', 'TCPMigrateReqFailure', 'TCPPLBRehash',
        'TCPAORequired', 'TCPAOBad', 'TCPAOKeyNotFound', 'TCPAOGood', 'TCPAODroppedIcmps',
    ),
    'IpExt': (
        'InNoRoutes', 'InTruncatedPkts', 'InMcastPkts', 'OutMcastPkts', 'InBcastPkts',
        'OutBcastPkts', 'InOctets', 'OutOctets', 'InMcastOctets', 'OutMcastOctets',
        'InBcastOctets', 'OutBcastOctets', 'InCsumErrors', 'InNoECTPkts', 'InECT1Pkts',
        'InECT0Pkts', 'InCEPkts', 'ReasmOverlaps',
    ),
}

# ustack's own counters, for paths Linux does not have (its extensions), under their own group
LINUX_MIB["UstackExt"] = (
    'TWSilentSYN',        # ustack.tcp_tw_silent_syn: an unacceptable SYN in TIME-WAIT dropped
    'PAWSPassive',        # ustack.tcp_tw_recycle: a SYN older than the peer's cached TSval
)                         # (Linux < 4.12 counted it as TcpExtPAWSPassive)

_RESOLUTION_ORDER = ("TcpExt", "Tcp", "Ip", "IpExt", "Icmp", "UstackExt")


def _build_aliases() -> dict[str, str]:
    aliases: dict[str, str] = {}
    for group in reversed(_RESOLUTION_ORDER):
        for field in LINUX_MIB[group]:
            aliases[field] = group + field
    return aliases


ALIASES = _build_aliases()
ALL_NAMES = tuple(g + f for g in _RESOLUTION_ORDER for f in LINUX_MIB[g])


class Counters(Mapping[str, int]):
    """Read-only view of a stack's counters; ``values`` is the mutable dict the core writes."""

    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values: dict[str, int] = dict.fromkeys(ALL_NAMES, 0)

    def _key(self, name: str) -> str:
        if name in self.values:
            return name
        key = ALIASES.get(name)
        if key is None:
            raise KeyError(f"{name!r} is not a Linux TCP/IP counter name "
                           "(use nstat names like 'TcpExtTW' or netstat names like 'TW')")
        return key

    def __getitem__(self, name: str) -> int:
        return self.values[self._key(name)]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self.values or name in ALIASES)

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)

    def nonzero(self) -> dict[str, int]:
        """The counters that moved, like ``nstat -a`` prints them."""
        return {k: v for k, v in self.values.items() if v}

    def __repr__(self) -> str:
        return f"Counters({self.nonzero()!r})"
