"""A link over a Linux TUN device: the kernel on one side, ustack on the other.

``TunLink.open("ust0")`` creates the device in the calling thread's network namespace (see
:func:`ustack.netns.setup_tun`), gives the kernel its side's address, and reads and writes raw
IPv4 packets (IFF_TUN | IFF_NO_PI: no packet-information header).  The device is not persistent:
``close()`` closes the fd and the kernel removes the device with it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..netns import setup_tun
from .fd import FdLink

if TYPE_CHECKING:
    from pytun_pmd3.linux import TunTapDevice

__all__ = ["TunLink"]


class TunLink(FdLink):
    """An :class:`FdLink` on a TUN device it owns."""

    def __init__(self, device: TunTapDevice, *, kernel_address: str, mtu: int = 1500,
                 batch: int = 64, offload: bool = False) -> None:
        # The device object owns the fd (and closes it in __del__ too): we never close it ourselves.
        super().__init__(device.fileno(), mtu=mtu, batch=batch, close_fd=False,
                         vnet_hdr=offload)
        self._device = device
        self._kernel_address = kernel_address

    @classmethod
    def open(cls, ifname: str, kernel_address: str = "198.18.0.1/24", mtu: int = 1500, *,
             allow_root_namespace: bool = False, batch: int = 64,
             txqueuelen: int = 4096, offload: bool = False) -> TunLink:
        """Create and configure TUN device ``ifname`` in the current namespace and wrap it.

        Refuses in the root namespace unless ``allow_root_namespace=True``; raises
        PermissionError without CAP_NET_ADMIN.  ``offload``: virtio-net headers, checksum and
        TSO offloads (the kernel hands over super-segments; see ``setup_tun``).
        """
        device = setup_tun(ifname, kernel_address, mtu, allow_root_namespace=allow_root_namespace,
                           txqueuelen=txqueuelen, offload=offload)
        return cls(device, kernel_address=kernel_address, mtu=mtu, batch=batch, offload=offload)

    @property
    def ifname(self) -> str:
        """The device's name (what the kernel chose, if ``ifname`` was a template like ust%d)."""
        return self._device.name

    @property
    def kernel_address(self) -> str:
        """The kernel side's address with prefix, e.g. ``198.18.0.1/24``."""
        return self._kernel_address

    def close(self) -> None:
        """Stop I/O and close the device's fd, which removes the device.  Idempotent."""
        super().close()
        self._device.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<TunLink {self.ifname} kernel={self._kernel_address} mtu={self.mtu} {state}>"
