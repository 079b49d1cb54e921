"""Flow control shared by both sides of the proxy (aiohttp's ``base_protocol`` is the model).

Each connection pauses its own reading and hears when its own transport's write buffer crosses
the high-water mark. What a paused write *means* — stop reading the peer that fills it — is the
one hook a side overrides (``writes_paused`` / ``writes_resumed``), so the rules are written once.
"""

from __future__ import annotations

import asyncio


class FlowControl:
    """Reading and writing state of one transport; a base, not a protocol of its own."""

    __slots__ = ("closed", "read_paused", "transport", "write_paused", "write_paused_since")

    def __init__(self) -> None:
        # None until connection_made, which comes before any read or write: the asserts below
        # (one compare each, compiled) say so to mypy and stop a call out of order.
        self.transport: asyncio.Transport | None = None
        self.closed = False  # no more bytes go out or come in
        self.read_paused = False
        self.write_paused = False
        self.write_paused_since = 0.0  # the engine's clock when the peer stopped reading

    # -- the transport's calls ----------------------------------------------------------
    def pause_writing(self) -> None:
        self.write_paused = True
        self.write_paused_since = self.clock()
        self.writes_paused()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.writes_resumed()

    # -- hooks --------------------------------------------------------------------------
    def writes_paused(self) -> None:
        """The peer does not read what we write: stop feeding its buffer."""

    def writes_resumed(self) -> None:
        """The buffer drained: feed it again."""

    def clock(self) -> float:
        return 0.0

    # -- our own reading ----------------------------------------------------------------
    def pause(self) -> None:
        if not self.read_paused and not self.closed:
            self.read_paused = True
            transport = self.transport
            assert transport is not None
            transport.pause_reading()

    def resume(self) -> None:
        if self.read_paused and not self.closed:
            self.read_paused = False
            transport = self.transport
            assert transport is not None
            transport.resume_reading()
