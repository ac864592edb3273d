"""Private network namespaces and TUN devices inside them, for tests, the demo and benchmarks.

``with Netns() as ns:`` moves the calling *thread* into a new, unnamed network namespace
(``unshare(CLONE_NEWNET)``), and moves it back on the way out.  Nothing is bind-mounted under
/run/netns, so nothing outlives the process: the namespace is freed by the kernel when its last
reference (a thread in it, an fd to it, a socket or TUN device opened in it) goes away.

Things worth knowing, all of them Linux's rules, not ours:

- A network namespace belongs to a thread, not to the process.  Threads started while inside a
  namespace start inside it; threads started before (an executor's pool, for instance) stay where
  they were.  ``/proc/sys/net`` shows the calling thread's namespace, but ``/proc/net`` is
  ``/proc/self/net``, the *main* thread's, and ``/sys/class/net`` is the namespace sysfs was mounted
  in: use netlink (pyroute2) to look at links and addresses.
- A socket or TUN device stays in the namespace it was created in, whatever thread uses it later.
- Some settings are host-wide and absent from a child namespace (``net.ipv4.tcp_mem``,
  ``net.ipv4.tcp_max_orphans``, ``net.core.netdev_max_backlog``); some are read-only there
  (``net.core.rmem_max``, ``net.core.wmem_max``).

pyroute2's synchronous ``IPRoute`` runs an event loop of its own and so cannot be used from a
thread whose loop is running; :func:`iproute` then does the netlink work in a short-lived thread,
which inherits the calling thread's namespace.
"""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import functools
import ipaddress
import os
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from pytun_pmd3.linux import TunTapDevice

__all__ = ["Netns", "entered", "in_root_namespace", "iproute", "setup_tun", "tun_unavailable_reason"]

CLONE_NEWNET = 0x40000000
_THREAD_NS = "/proc/thread-self/ns/net"
_ROOT_NS = "/proc/1/ns/net"
PROC_NET_INIT_INO = 0xEFFFFFF9  # include/linux/proc_ns.h: init_net's fixed inode
_RUN_AS_ROOT = "run as root, or grant the capability to the Python binary"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]

T = TypeVar("T")


def _ns_id(path: str = _THREAD_NS) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns(CLONE_NEWNET) failed: {os.strerror(err)}")


def in_root_namespace() -> bool:
    """True when the calling thread is in the network namespace of PID 1.

    The host's initial namespace always counts as root (since Linux 6.x its inode is fixed,
    PROC_NET_INIT_INO).  Some VMs' init is not dumpable, and then not even root may look at
    /proc/1/ns: the kernel threads (kthreadd, PID 2) show the initial namespace instead.  When
    nothing can be told, answers True: callers use this to refuse changes, and refusing is the
    safe mistake.
    """
    current = _ns_id()
    if current[1] == PROC_NET_INIT_INO:
        return True
    try:
        return current == _ns_id(_ROOT_NS)
    except PermissionError:
        pass
    try:
        with open("/proc/2/comm") as f:
            if f.read().strip() == "kthreadd":
                return current == _ns_id("/proc/2/ns/net")
    except OSError:
        pass
    return True


class Netns:
    """A private, unnamed network namespace.

    ``with Netns() as ns:`` moves the calling thread into a new namespace (unshare CLONE_NEWNET),
    brings ``lo`` up, and on exit moves the thread back (setns to the saved original) and
    releases it — also when the body raised.  Nothing is left behind (no /run/netns bind mounts),
    even if the process is killed: the namespace dies with its last reference.

    A Netns is used once; while it is open, :meth:`entered` and :meth:`sysctl` work from any
    thread, in any namespace.
    """

    def __init__(self) -> None:
        self._fd = -1  # keeps the new namespace alive while we are open
        self._saved_fd = -1  # the namespace the entering thread came from
        self._owner: int | None = None  # native id of the thread that entered
        self._used = False
        self._inode = 0
        self._dev = 0

    # -- life cycle -------------------------------------------------------------------------
    def __enter__(self) -> Netns:
        if self._used:
            raise RuntimeError("a Netns can be entered only once; make a new one")
        self._used = True
        saved = os.open(_THREAD_NS, os.O_RDONLY | os.O_CLOEXEC)
        if _libc.unshare(CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            os.close(saved)
            if err == errno.EPERM:
                raise PermissionError(
                    err, f"creating a network namespace needs CAP_SYS_ADMIN ({_RUN_AS_ROOT})")
            raise OSError(err, f"unshare(CLONE_NEWNET) failed: {os.strerror(err)}")
        try:
            self._fd = os.open(_THREAD_NS, os.O_RDONLY | os.O_CLOEXEC)
            self._dev, self._inode = _ns_id()
            iproute(_set_lo_up)
        except BaseException:
            _setns(saved)
            os.close(saved)
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            raise
        self._saved_fd = saved
        self._owner = threading.get_native_id()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._owner is None:
            return
        if threading.get_native_id() != self._owner:
            raise RuntimeError("a Netns must be left on the thread that entered it")
        try:
            _setns(self._saved_fd)
        finally:
            os.close(self._saved_fd)
            os.close(self._fd)
            self._saved_fd = self._fd = -1
            self._owner = None

    @property
    def inode(self) -> int:
        """The namespace's inode number (what ``ls -l /proc/self/ns/net`` shows)."""
        return self._inode

    @property
    def is_open(self) -> bool:
        return self._fd >= 0

    def fileno(self) -> int:
        """An fd referring to the namespace (for setns); valid while the Netns is open."""
        self._check_open()
        return self._fd

    def _check_open(self) -> None:
        if self._fd < 0:
            raise RuntimeError("this Netns is not open (use `with Netns() as ns:`)")

    # -- running code inside ----------------------------------------------------------------
    @contextlib.contextmanager
    def entered(self) -> Iterator[Netns]:
        """Temporarily move the calling thread into this namespace (a no-op if it is there)."""
        self._check_open()
        if _ns_id() == (self._dev, self._inode):
            yield self
            return
        with entered(self._fd):
            yield self

    # -- settings -----------------------------------------------------------------------------
    def sysctl(self, name: str, value: Any) -> None:
        """Write a /proc/sys setting in this namespace, like ``sysctl -w name=value``.

        ``name`` is dotted (``net.ipv4.tcp_fin_timeout``) or a path (``net/ipv4/conf/a.b/x``);
        a value of several numbers may be a tuple or list.  Raises FileNotFoundError when the
        setting does not exist here (some are host-wide and only the root namespace has them),
        PermissionError when it is read-only in a namespace, ValueError when the kernel
        rejects the value.
        """
        path = _sysctl_path(name)
        if isinstance(value, (tuple, list)):
            text = "\t".join(str(v) for v in value)
        else:
            text = str(int(value)) if isinstance(value, bool) else str(value)
        with self.entered():
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
                try:
                    os.write(fd, text.encode() + b"\n")
                finally:
                    os.close(fd)
            except OSError as exc:
                raise _sysctl_error(name, path, exc, value) from exc

    def read_sysctl(self, name: str) -> str:
        """Read a /proc/sys setting in this namespace (whitespace at the ends stripped)."""
        path = _sysctl_path(name)
        with self.entered():
            try:
                with open(path) as f:
                    return f.read().strip()
            except OSError as exc:
                raise _sysctl_error(name, path, exc) from exc


def _sysctl_path(name: str) -> str:
    name = name.strip()
    if name.startswith("/proc/sys/"):
        return name
    if "/" in name:
        return "/proc/sys/" + name.lstrip("/")
    return "/proc/sys/" + name.replace(".", "/")


def _sysctl_error(name: str, path: str, exc: OSError, value: Any = None) -> OSError | ValueError:
    if exc.errno == errno.ENOENT:
        return FileNotFoundError(
            errno.ENOENT,
            f"sysctl {name} does not exist in this network namespace ({path}): unknown, or "
            "host-wide (only the root namespace has it)")
    if exc.errno in (errno.EPERM, errno.EACCES):
        return PermissionError(
            exc.errno, f"sysctl {name} is read-only or host-wide in a network namespace ({path})")
    if exc.errno == errno.EINVAL and value is not None:
        return ValueError(f"the kernel rejected {value!r} for sysctl {name} ({path})")
    return OSError(exc.errno, f"sysctl {name} ({path}): {exc.strerror}")


# -- netlink --------------------------------------------------------------------------------
@contextlib.contextmanager
def entered(fd: int) -> Iterator[None]:
    """Temporarily move the calling thread into the namespace `fd` refers to (any namespace fd:
    a Netns's, or one of /run/netns/NAME); sockets made inside stay in it."""
    back = os.open(_THREAD_NS, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(fd)
        try:
            yield
        finally:
            _setns(back)
    finally:
        os.close(back)


def iproute(fn: Callable[[Any], T]) -> T:
    """Run ``fn(ipr)`` with a pyroute2 IPRoute whose socket is in the calling thread's namespace."""

    def work() -> T:
        from pyroute2 import IPRoute

        # Our own selector loop: a uvloop policy's loop cannot open netlink endpoints.
        loop = asyncio.SelectorEventLoop()
        try:
            with IPRoute(use_event_loop=loop) as ipr:
                return fn(ipr)
        finally:
            loop.run_until_complete(asyncio.sleep(0))  # lets the closed transport finish
            loop.close()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return work()
    # A loop runs on this thread; a new thread starts in this thread's namespace.
    box: list[Any] = []

    def run() -> None:
        try:
            box.append((True, work()))
        except BaseException as exc:  # handed back to the caller below
            box.append((False, exc))

    worker = threading.Thread(target=run, name="ustack-netlink")
    worker.start()
    worker.join()
    ok, result = box[0]
    if not ok:
        raise result
    return result


def _netlink_error(exc: Exception, what: str) -> Exception:
    code = getattr(exc, "code", None)
    if isinstance(code, int) and code > 0:
        if code == errno.EPERM:
            return PermissionError(code, f"{what} needs CAP_NET_ADMIN ({_RUN_AS_ROOT})")
        return OSError(code, f"{what}: {os.strerror(code)}")
    return exc


def _set_lo_up(ipr: Any) -> None:
    try:
        (index,) = ipr.link_lookup(ifname="lo")
        ipr.link("set", index=index, state="up")
    except Exception as exc:
        raise _netlink_error(exc, "bringing lo up in the new namespace") from exc


# -- TUN devices ----------------------------------------------------------------------------
def setup_tun(
    ifname: str,
    kernel_address: str = "198.18.0.1/24",
    mtu: int = 1500,
    *,
    allow_root_namespace: bool = False,
    txqueuelen: int = 4096,
    offload: bool = False,
) -> TunTapDevice:
    """Create and configure a TUN device (IFF_TUN | IFF_NO_PI) in the calling thread's namespace.

    The fd is made non-blocking, IPv6 is disabled on the device (no router solicitations or
    MLD reports: only our traffic is there), the MTU is set, ``kernel_address`` (with prefix:
    the connected route follows) is added and the link is brought up.  The device is not
    persistent: closing the returned object removes it.  ``ifname`` may be a template such as
    ``ust%d``; the device's ``name`` says what the kernel chose.  ``txqueuelen`` is how many
    packets the kernel queues for ustack to read before it drops (Linux's default, 500, drops
    bursts that a Python reader takes a moment to drain).

    ``offload``: open the device with a virtio-net header before each packet (IFF_VNET_HDR)
    and tell the kernel ustack takes partial checksums and TCP super-segments
    (TUNSETOFFLOAD with TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6), so the kernel hands over up
    to 64 KB at a time instead of one segment per read.

    Refuses (RuntimeError) in the root namespace unless ``allow_root_namespace=True``.
    """
    iface = ipaddress.ip_interface(kernel_address)
    if iface.version != 4:
        raise ValueError(f"kernel_address must be IPv4 with a prefix, not {kernel_address!r}")
    _check_ifname(ifname)
    if not 68 <= mtu <= 65535:
        raise ValueError(f"mtu must be 68..65535, not {mtu}")
    if not allow_root_namespace and in_root_namespace():
        raise RuntimeError(
            f"refusing to create TUN device {ifname} in the root network namespace: enter a "
            "private one first (`with ustack.netns.Netns():`) or pass allow_root_namespace=True")

    from pytun_pmd3.linux import IFF_NO_PI, IFF_TUN

    try:
        device = _tun_device()(ifname, IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if offload else 0))
    except OSError as exc:
        raise _tun_error(ifname, exc) from exc
    name = device.name
    try:
        os.set_blocking(device.fileno(), False)
        if offload:
            # pytun-pmd3 has no call for it: the ioctl on its fd
            fcntl.ioctl(device.fileno(), TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
        _disable_ipv6(name)

        def configure(ipr: Any) -> None:
            what = f"configuring TUN device {name}"
            try:
                (index,) = ipr.link_lookup(ifname=name)
                ipr.link("set", index=index, mtu=mtu, txqlen=txqueuelen)
                ipr.addr("add", index=index, address=str(iface.ip),
                         prefixlen=iface.network.prefixlen)
                ipr.link("set", index=index, state="up")
            except Exception as exc:
                raise _netlink_error(exc, what) from exc

        iproute(configure)
    except BaseException:
        device.close()
        raise
    return device


_SafeTun: Any = None


# <linux/if_tun.h>
IFF_VNET_HDR = 0x4000
TUNSETOFFLOAD = 0x400454D0          # _IOW('T', 208, unsigned int)
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 = 0x01, 0x02, 0x04


def _tun_device() -> Any:
    """pytun-pmd3's TunTapDevice, made safe to fail: when TUNSETIFF fails it closes its fd but
    keeps the number, and its __del__ closes that number again whenever the half-made object is
    collected, by then perhaps another device's fd.  The subclass forgets the number first."""
    global _SafeTun
    if _SafeTun is None:
        from pytun_pmd3 import TunTapDevice

        class SafeTunTapDevice(TunTapDevice):  # type: ignore[misc]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                self._fd = -1
                try:
                    super().__init__(*args, **kwargs)
                except BaseException:
                    self._fd = -1       # already closed by pytun: never close it again
                    raise
        _SafeTun = SafeTunTapDevice
    return _SafeTun


def _check_ifname(ifname: str) -> None:
    # the kernel's dev_valid_name()
    raw = ifname.encode()
    if not raw or len(raw) >= 16 or ifname in (".", "..") or any(
            c == "/" or c == ":" or c.isspace() for c in ifname):
        raise ValueError(f"invalid interface name {ifname!r} (1..15 bytes, no '/', ':' or spaces)")


def _tun_error(ifname: str, exc: OSError) -> OSError:
    err = exc.errno
    if err in (errno.EPERM, errno.EACCES):
        return PermissionError(
            err, f"creating TUN device {ifname} needs CAP_NET_ADMIN ({_RUN_AS_ROOT}); "
            f"the kernel said: {os.strerror(err)}")
    if err == errno.ENOENT:
        return FileNotFoundError(err, "/dev/net/tun is missing: load the tun module (modprobe tun)")
    if err in (errno.ENODEV, errno.ENXIO):
        return OSError(err, "/dev/net/tun has no driver: load the tun module (modprobe tun)")
    if err == errno.EBUSY:
        return OSError(err, f"TUN device {ifname} already exists in this namespace and is in use")
    if err == errno.EINVAL:
        return OSError(err, f"cannot create TUN device {ifname}: a device of another kind has "
                       "that name, or the flags were refused")
    return OSError(err, f"creating TUN device {ifname}: {os.strerror(err) if err else exc}")


def _disable_ipv6(ifname: str) -> None:
    try:
        fd = os.open(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6", os.O_WRONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        if os.path.isdir("/proc/sys/net/ipv6"):
            raise
        return  # a kernel without IPv6: nothing to quiet
    try:
        os.write(fd, b"1\n")
    finally:
        os.close(fd)


# -- can this process do it at all? -----------------------------------------------------------
@functools.cache
def tun_unavailable_reason() -> str | None:
    """None when this process can make private network namespaces with TUN devices in them;
    otherwise a sentence saying why not.  Probes for real, on a throwaway thread whose
    private namespace (and the probe device in it) disappears with it."""
    if not os.path.exists("/proc/thread-self/ns/net"):
        return "needs Linux with network namespaces (/proc/thread-self/ns/net is missing)"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun (the tun module is not loaded)"
    box: list[str | None] = []

    def probe() -> None:
        if _libc.unshare(CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            box.append(f"cannot create a network namespace ({os.strerror(err)}): needs root "
                       "(CAP_SYS_ADMIN)")
            return
        try:
            from pytun_pmd3.linux import IFF_NO_PI, IFF_TUN

            _tun_device()("ustprobe%d", IFF_TUN | IFF_NO_PI).close()
        except OSError as exc:
            box.append(str(_tun_error("ustprobe", exc)))
            return
        box.append(None)

    # The probe thread's namespace dies with the thread.
    worker = threading.Thread(target=probe, name="ustack-tun-probe")
    worker.start()
    worker.join()
    return box[0]


# -- the kernel's own view, in the calling thread's namespace -------------------------------
# /proc/net/tcp state codes (include/net/tcp_states.h)
KERNEL_STATES = {1: "ESTAB", 2: "SYN-SENT", 3: "SYN-RECV", 4: "FIN-WAIT-1", 5: "FIN-WAIT-2",
                 6: "TIME-WAIT", 7: "CLOSED", 8: "CLOSE-WAIT", 9: "LAST-ACK", 10: "LISTEN",
                 11: "CLOSING"}


def kernel_sockets() -> list[tuple[int, int, str]]:
    """(local port, remote port, state) of the kernel's TCP sockets in this namespace."""
    out = []
    with open("/proc/thread-self/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            lport = int(parts[1].split(":")[1], 16)
            rport = int(parts[2].split(":")[1], 16)
            out.append((lport, rport, KERNEL_STATES[int(parts[3], 16)]))
    return out


def kernel_counters() -> dict[str, int]:
    """The kernel's counters in this namespace, by nstat name (TcpOutRsts, TcpExtTW, ...):
    what tests and benchmarks compare ustack's counters against."""
    out: dict[str, int] = {}
    for path in ("/proc/thread-self/net/snmp", "/proc/thread-self/net/netstat"):
        with open(path) as f:
            lines = f.read().splitlines()
        for names, values in zip(lines[::2], lines[1::2]):
            group, *fields = names.split()
            _, *nums = values.split()
            for field, num in zip(fields, nums):
                out[group.rstrip(":") + field] = int(num)
    return out
