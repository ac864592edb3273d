"""Adapters that put ecosystem libraries on a ustack `Stack` instead of kernel sockets.

Each adapter is its own module and imports its library only when imported itself, so
installing ustack does not pull any of them in:

* `ustack.contrib.aiohttp`    -- `UstackSite` (serve an aiohttp app), `UstackConnector` (client)
  -- ``pip install 'ustack[aiohttp]'``
* `ustack.contrib.httpx`      -- `UstackBackend` (an httpcore network backend) and
  `UstackTransport` (for ``httpx.AsyncClient(transport=...)``) -- ``pip install 'ustack[httpx]'``
* `ustack.contrib.websockets` -- `serve` and `connect` on the websockets library's asyncio
  implementation -- ``pip install 'ustack[websockets]'``

All of them use only ustack's public asyncio API (`Stack.create_server`,
`Stack.create_connection`, `Stack.start_tls`) and run on the event loop the stack runs on
(asyncio's or uvloop).  ustack speaks IPv4 and does no name resolution of its own: names are
resolved with the event loop's getaddrinfo, as asyncio does.
"""
