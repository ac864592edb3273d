"""Netns: private network namespaces that leave nothing behind, and their settings."""
from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from ustack.netns import Netns, in_root_namespace, setup_tun

pytestmark = pytest.mark.root
REPO = Path(__file__).resolve().parents[1]


def ns_inode() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


def link_names() -> set[str]:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return {link.get("ifname") for link in ipr.get_links()}


def lo_is_up() -> bool:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        (lo,) = ipr.get_links(ipr.link_lookup(ifname="lo")[0])
        return bool(lo["flags"] & 1)


def netns_mounts() -> dict[str, list[str]]:
    return {d: sorted(os.listdir(d)) for d in ("/run/netns", "/var/run/netns") if os.path.isdir(d)}


def namespaces_in_use() -> set[int]:
    """Inodes of the network namespaces that the processes we may look at are in."""
    inodes = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            inodes.add(os.stat(f"/proc/{pid}/ns/net").st_ino)
        except OSError:
            pass
    return inodes


def open_fds() -> set[str]:
    return set(os.listdir("/proc/thread-self/fd"))


def test_enter_moves_thread_and_exit_restores():
    before = ns_inode()
    fds = open_fds()
    mounts = netns_mounts()
    with Netns() as ns:
        inside = ns_inode()
        assert inside != before and inside == ns.inode
        assert in_root_namespace() is False
        assert link_names() == {"lo"}
        assert lo_is_up()
        # lo works: a datagram to ourselves over 127.0.0.1
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            s.settimeout(2)
            s.sendto(b"ping", s.getsockname())
            assert s.recv(16) == b"ping"
    assert ns_inode() == before
    assert open_fds() == fds, "the namespace fds were not released"
    assert netns_mounts() == mounts, "nothing may be bind-mounted under /run/netns"
    assert not ns.is_open


def test_exception_in_body_still_restores():
    before = ns_inode()
    with pytest.raises(ZeroDivisionError):
        with Netns():
            assert ns_inode() != before
            1 / 0
    assert ns_inode() == before


def test_netns_is_used_once():
    with Netns() as ns:
        pass
    with pytest.raises(RuntimeError, match="only once"):
        with ns:
            pass
    with pytest.raises(RuntimeError, match="not open"):
        ns.read_sysctl("net.ipv4.tcp_fin_timeout")


def test_nested_netns():
    outer_before = ns_inode()
    with Netns() as a:
        with Netns() as b:
            assert len({outer_before, a.inode, b.inode, ns_inode()}) == 3
            assert ns_inode() == b.inode
            assert lo_is_up()
        assert ns_inode() == a.inode
    assert ns_inode() == outer_before


def test_sysctl_round_trip_is_private_to_the_namespace():
    name = "net.ipv4.tcp_fin_timeout"
    with open("/proc/sys/net/ipv4/tcp_fin_timeout") as f:
        host_value = f.read().strip()
    with Netns() as ns:
        assert ns.read_sysctl(name) == "60"  # a new namespace starts from the kernel's default
        ns.sysctl(name, 17)
        assert ns.read_sysctl(name) == "17"
        assert ns.read_sysctl("net/ipv4/tcp_fin_timeout") == "17"
        with open("/proc/sys/net/ipv4/tcp_fin_timeout") as f:
            assert f.read().strip() == "17"
        ns.sysctl("net.ipv4.ip_local_port_range", (40000, 40100))
        assert ns.read_sysctl("net.ipv4.ip_local_port_range").split() == ["40000", "40100"]
    with open("/proc/sys/net/ipv4/tcp_fin_timeout") as f:
        assert f.read().strip() == host_value


def test_sysctl_from_outside_the_namespace():
    name = "net.ipv4.tcp_fin_timeout"
    jobs: queue.Queue = queue.Queue()
    results: queue.Queue = queue.Queue()

    def worker() -> None:  # started before any Netns: it stays in the original namespace
        while (job := jobs.get()) is not None:
            try:
                results.put(job())
            except BaseException as exc:
                results.put(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        outside = ns_inode()
        with Netns() as a:
            with Netns() as b:
                a.sysctl(name, 23)  # from b
                assert ns_inode() == b.inode
                assert b.read_sysctl(name) == "60" and a.read_sysctl(name) == "23"
                jobs.put(lambda: (a.sysctl(name, 24), a.read_sysctl(name), ns_inode()))
                assert results.get(timeout=10) == (None, "24", outside)
                with a.entered():
                    assert ns_inode() == a.inode
                    with a.entered():  # re-entrant
                        assert ns_inode() == a.inode
                    assert ns_inode() == a.inode
                assert ns_inode() == b.inode
    finally:
        jobs.put(None)
        thread.join()


def test_sysctl_errors_name_the_setting():
    with Netns() as ns:
        with pytest.raises(FileNotFoundError, match="net.ipv4.no_such_setting"):
            ns.sysctl("net.ipv4.no_such_setting", 1)
        # host-wide: only the root namespace has it
        with pytest.raises(FileNotFoundError, match="net.ipv4.tcp_mem.*host-wide"):
            ns.read_sysctl("net.ipv4.tcp_mem")
        # read-only in a namespace (writable in the root one)
        with pytest.raises(PermissionError, match="net.core.rmem_max.*read-only"):
            ns.sysctl("net.core.rmem_max", 1 << 20)
        with pytest.raises(ValueError, match="net.ipv4.tcp_fin_timeout"):
            ns.sysctl("net.ipv4.tcp_fin_timeout", "not a number")


def test_setup_tun_refuses_in_the_root_namespace():
    if not in_root_namespace():
        pytest.skip("this process does not run in the root network namespace")
    before = link_names()
    with pytest.raises(RuntimeError, match="refusing to create TUN device ust9 in the root"):
        setup_tun("ust9")
    assert link_names() == before


def test_setup_tun_inside_makes_a_device_only_there():
    host_links = link_names()
    with Netns():
        device = setup_tun("ust0")
        try:
            assert link_names() == {"lo", "ust0"}
            with pytest.raises(OSError, match="ust0"):
                setup_tun("ust0")  # the name is taken
        finally:
            device.close()
        assert link_names() == {"lo"}
    assert link_names() == host_links


def test_in_root_namespace():
    outside = in_root_namespace()
    with Netns():
        assert in_root_namespace() is False
    assert in_root_namespace() is outside


_KILLED_CHILD = textwrap.dedent("""
    import os, sys, time
    from ustack.netns import Netns, setup_tun
    ns = Netns().__enter__()
    device = setup_tun("ust0")
    print(ns.inode, flush=True)
    time.sleep(60)
""")


def test_killed_process_leaves_nothing_behind():
    host_links = link_names()
    mounts = netns_mounts()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", _KILLED_CHILD], stdout=subprocess.PIPE,
                             text=True, env=env)
    try:
        inode = int(child.stdout.readline())
        assert inode != ns_inode()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    assert inode not in namespaces_in_use(), "the killed child's namespace outlived it"
    assert link_names() == host_links
    assert netns_mounts() == mounts


def test_a_failed_tun_open_never_closes_someone_elses_fd():
    """pytun-pmd3's TunTapDevice closes its fd when TUNSETIFF fails but keeps the number, and
    its __del__ closes that number again: after a garbage collection, whatever reused the
    number (another stack's device) was closed under its owner.  setup_tun must not let that
    happen."""
    import gc
    with Netns():
        first = setup_tun("ust0")
        try:
            with pytest.raises(OSError, match="ust0") as failed:
                setup_tun("ust0")          # the name is taken: the open fails
            # the error (and with its traceback the half-made device) is still referenced,
            # as a caller that logs or keeps it would; its fd number is free again
            victim_r, victim_w = os.pipe()  # takes the failed open's fd number
            try:
                del failed
                gc.collect()
                os.fstat(victim_r)          # still ours
                os.fstat(first.fileno())
                assert link_names() == {"lo", "ust0"}
            finally:
                os.close(victim_r)
                os.close(victim_w)
        finally:
            first.close()
