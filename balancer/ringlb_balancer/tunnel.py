"""An upgraded connection (WebSocket): bytes relayed both ways unparsed, and its one ending.

The tunnel owns both transports once the replica's 101 is relayed. Whatever ends it — either
side closing, both sides half-closing, a reset, the idle deadline — ends it whole: both
transports closed and the client's connection slot freed. A half-close is passed on while the
other direction still flows, as TCP lets a peer expect.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ringlb_balancer.client import ClientConnection
    from ringlb_balancer.upstream import UpstreamConnection


class Tunnel:
    __slots__ = ("client", "client_eof", "ended", "last_io", "replica", "replica_eof")

    def __init__(self, client: ClientConnection, replica: UpstreamConnection, now: float) -> None:
        self.client = client
        self.replica = replica
        self.last_io = now
        self.client_eof = False  # the client sends no more
        self.replica_eof = False  # the replica sends no more
        self.ended = False

    def from_client(self, data: bytes) -> None:
        self.last_io = self.client.engine.now
        transport = self.replica.transport
        assert transport is not None  # the replica's connection answered 101: it is connected
        transport.write(data)

    def from_replica(self, data: bytes) -> None:
        self.last_io = self.client.engine.now
        self.client.write(data)  # after the 101's head, which the same read may have corked

    def eof_from_client(self) -> bool:
        """The client half-closed; the return value is the protocol's ``eof_received``'s."""
        self.client_eof = True
        return self._half_close(self.replica.transport, self.replica_eof)

    def eof_from_replica(self) -> bool:
        self.replica_eof = True
        return self._half_close(self.client.transport, self.client_eof)

    def _half_close(self, other: asyncio.Transport | None, other_done: bool) -> bool:
        if other is None or other_done or not other.can_write_eof():
            self.end()  # nothing flows either way any more, or the half-close cannot be passed on
            return False
        other.write_eof()
        return True  # keep our transport open: the other direction still flows

    # -- flow control: a side that does not read stops the other from being read ----------
    def client_congested(self, congested: bool) -> None:
        if congested:
            self.replica.pause()
        else:
            self.replica.resume()

    def replica_congested(self, congested: bool) -> None:
        if congested:
            self.client.pause()
        else:
            self.client.resume()

    def end(self) -> None:
        """Close both transports and free the slot; safe to call any number of times."""
        if self.ended:
            return
        self.ended = True
        self.client.close()
        self.replica.close()
