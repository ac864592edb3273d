"""asyncio adapters: the Stack, its transports and servers."""
from ustack.aio.stack import Server, Stack, run_until
from ustack.aio.transport import SocketOptions, StackSocket, TcpTransport

__all__ = ["Stack", "Server", "TcpTransport", "StackSocket", "SocketOptions", "run_until"]
