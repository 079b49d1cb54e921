"""The two connection state machines of the proxy, as tables: states, events, and the moves
between them. Nothing outside these tables decides what a connection may do next.

Modelled on h11's ``_state.py``: every event is checked against the table, and a move the table
does not hold is a bug in the proxy or a peer out of step, never something to carry on from. The
rule that ties the two machines together is the pool's: a replica connection is reused only from
``U_IDLE``, which it reaches only when its request was sent whole as framed and its answer read
whole as framed with nothing after it (``U_AWAITING`` + ``ANSWERED``). Every other ending closes it.

The machines are pure (no I/O), so the unit tests walk them without sockets; the protocols in
``client.py`` and ``upstream.py`` call ``move`` at each event and act on the state it returns.
"""

from __future__ import annotations

from typing import Final

# -- client connection (what is being read from the client) ---------------------------------
C_IDLE: Final = 0  # between requests (kept alive), or before the first byte
C_HEAD: Final = 1  # a request head is arriving
C_BODY: Final = 2  # a request body is arriving
C_UPGRADE: Final = 3  # an Upgrade request is out; its bytes after the head wait, bounded
C_TUNNEL: Final = 4  # the replica said 101: bytes flow both ways unparsed
C_CLOSED: Final = 5

# client events
HEAD_BYTES: Final = 0  # the first byte of a request head
HEAD_DONE: Final = 1  # a head without a body is complete
HEAD_BODY: Final = 2  # a head announcing a body is complete
HEAD_UPGRADE: Final = 3  # a head asking for an upgrade (never with a body) is complete
BODY_DONE: Final = 4
UPGRADED: Final = 5  # the replica's 101 was relayed
REFUSED: Final = 6  # an upgrade answered otherwise: its connection cannot carry another request
CLOSE: Final = 7  # either side closed, a deadline passed, a bound was exceeded

CLIENT_STATES = ("IDLE", "HEAD", "BODY", "UPGRADE", "TUNNEL", "CLOSED")
CLIENT_EVENTS = ("HEAD_BYTES", "HEAD_DONE", "HEAD_BODY", "HEAD_UPGRADE", "BODY_DONE", "UPGRADED", "REFUSED", "CLOSE")

CLIENT: Final[dict[tuple[int, int], int]] = {
    (C_IDLE, HEAD_BYTES): C_HEAD,
    (C_HEAD, HEAD_DONE): C_IDLE,
    (C_HEAD, HEAD_BODY): C_BODY,
    (C_HEAD, HEAD_UPGRADE): C_UPGRADE,
    (C_BODY, BODY_DONE): C_IDLE,
    (C_UPGRADE, UPGRADED): C_TUNNEL,
    (C_UPGRADE, REFUSED): C_CLOSED,
    **{(state, CLOSE): C_CLOSED for state in range(len(CLIENT_STATES))},
}

# -- replica connection ---------------------------------------------------------------------
U_CONNECTING: Final = 0  # opened for one exchange, not yet connected
U_IDLE: Final = 1  # in the pool: no request, and no byte may arrive
U_SENDING: Final = 2  # a request head is out, its body may still be on the way
U_AWAITING: Final = 3  # the request is out whole; its answer is awaited or arriving
U_TUNNEL: Final = 4
U_CLOSED: Final = 5

# replica events
CONNECTED: Final = 0
ASSIGNED: Final = 1  # an exchange's head was written
SENT: Final = 2  # the last byte of the request, as framed, was written
ANSWERED: Final = 3  # the answer ended as framed
SWITCHED: Final = 4  # a 101 to a request that asked for it
FAILED: Final = 5  # reset, garbage, stray bytes, a deadline, an answer before the request was out

UPSTREAM_STATES = ("CONNECTING", "IDLE", "SENDING", "AWAITING", "TUNNEL", "CLOSED")
UPSTREAM_EVENTS = ("CONNECTED", "ASSIGNED", "SENT", "ANSWERED", "SWITCHED", "FAILED")

UPSTREAM: Final[dict[tuple[int, int], int]] = {
    (U_CONNECTING, CONNECTED): U_IDLE,
    (U_IDLE, ASSIGNED): U_SENDING,
    (U_SENDING, SENT): U_AWAITING,
    # An answer that ends before its request was sent whole leaves request bytes unsent (or in
    # the replica's buffer): that connection is out of step and closes.
    (U_SENDING, ANSWERED): U_CLOSED,
    (U_AWAITING, ANSWERED): U_IDLE,
    (U_AWAITING, SWITCHED): U_TUNNEL,
    **{(state, FAILED): U_CLOSED for state in range(len(UPSTREAM_STATES))},
}


class ProtocolViolation(Exception):
    """A move the table does not hold: the connection it happened on is closed."""


def move(table: dict[tuple[int, int], int], state: int, event: int) -> int:
    """The state after ``event``; raises ``ProtocolViolation`` for a move the table lacks."""
    nxt = table.get((state, event), -1)
    if nxt < 0:
        names = (CLIENT_STATES, CLIENT_EVENTS) if table is CLIENT else (UPSTREAM_STATES, UPSTREAM_EVENTS)
        raise ProtocolViolation(f"{names[1][event]} in state {names[0][state]}")
    return nxt


# The same tables flattened for the protocols, which move several times per request: a list
# index instead of a tuple built and hashed (measured: a third of a microsecond per request).
_STRIDE: Final = 8  # at least the number of events of either machine


def _flat(table: dict[tuple[int, int], int], count: int) -> list[int]:
    flat = [-1] * (count * _STRIDE)
    for (state, event), nxt in table.items():
        flat[state * _STRIDE + event] = nxt
    return flat


_CLIENT_FLAT: Final = _flat(CLIENT, len(CLIENT_STATES))
_UPSTREAM_FLAT: Final = _flat(UPSTREAM, len(UPSTREAM_STATES))


def client_move(state: int, event: int) -> int:
    """``move(CLIENT, state, event)``, for the client protocol."""
    nxt = _CLIENT_FLAT[state * _STRIDE + event]
    return nxt if nxt >= 0 else move(CLIENT, state, event)


def upstream_move(state: int, event: int) -> int:
    """``move(UPSTREAM, state, event)``, for the replica protocol."""
    nxt = _UPSTREAM_FLAT[state * _STRIDE + event]
    return nxt if nxt >= 0 else move(UPSTREAM, state, event)
