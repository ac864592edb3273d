"""ustack: a userspace TCP/IP stack for Python that ends connections exactly like Linux.

    import ustack
    async with ustack.Stack.tun(ifname="ust0", address="198.18.0.2",
                                kernel_address="198.18.0.1/24") as stack:
        server = await stack.start_server(handler, port=8080)
"""
from ustack.aio import Server, Stack
from ustack.counters import Counters
from ustack.host import ConnInfo, Host
from ustack.sysctl import Sysctl

__version__ = "0.1.0"
__all__ = ["Stack", "Server", "Host", "ConnInfo", "Counters", "Sysctl", "__version__"]
