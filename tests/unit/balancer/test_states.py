"""The proxy's two connection machines as tables (``ringlb_balancer.states``), walked without sockets.

Every (state, event) pair is tried against each table: what the table holds is the only move, what
it lacks raises ``ProtocolViolation``. The pool rule and the shape of each machine (every state
reachable from the first, closing always possible and final) are checked on the tables themselves,
so a later edit that adds a move has to say so here.
"""

from __future__ import annotations

import itertools
from collections import deque

import pytest

from ringlb_balancer import states
from ringlb_balancer.states import ProtocolViolation, move

MACHINES = {
    "client": (states.CLIENT, states.CLIENT_STATES, states.CLIENT_EVENTS, states.C_IDLE, states.C_CLOSED, states.CLOSE),
    "upstream": (
        states.UPSTREAM,
        states.UPSTREAM_STATES,
        states.UPSTREAM_EVENTS,
        states.U_CONNECTING,
        states.U_CLOSED,
        states.FAILED,
    ),
}


def pairs(name: str) -> list[tuple[int, int]]:
    _, state_names, event_names, *_ = MACHINES[name]
    return list(itertools.product(range(len(state_names)), range(len(event_names))))


def reachable(table: dict[tuple[int, int], int], start: int) -> set[int]:
    seen, todo = {start}, deque([start])
    while todo:
        state = todo.popleft()
        for (at, _), nxt in table.items():
            if at == state and nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


@pytest.mark.parametrize("name", MACHINES)
def test_every_pair_outside_the_table_raises_and_names_the_move(name):
    table, state_names, event_names, *_ = MACHINES[name]
    refused = 0
    for state, event in pairs(name):
        if (state, event) in table:
            assert move(table, state, event) == table[state, event]
            continue
        refused += 1
        with pytest.raises(ProtocolViolation) as caught:
            move(table, state, event)
        assert str(caught.value) == f"{event_names[event]} in state {state_names[state]}"
    assert refused > len(pairs(name)) // 2  # the tables are narrow: most moves are violations


@pytest.mark.parametrize("name", MACHINES)
def test_the_table_speaks_only_of_its_own_states_and_events(name):
    table, state_names, event_names, *_ = MACHINES[name]
    for (state, event), nxt in table.items():
        assert 0 <= state < len(state_names) and 0 <= event < len(event_names) and 0 <= nxt < len(state_names)


@pytest.mark.parametrize("name", MACHINES)
def test_closing_is_possible_from_every_state_and_final(name):
    table, state_names, _, _, closed, close = MACHINES[name]
    for state in range(len(state_names)):
        assert move(table, state, close) == closed
    assert {event for (state, event) in table if state == closed} == {close}


@pytest.mark.parametrize("name", MACHINES)
def test_every_state_is_reachable_from_the_first_and_can_reach_closed(name):
    table, state_names, _, start, closed, _ = MACHINES[name]
    assert reachable(table, start) == set(range(len(state_names)))
    for state in range(len(state_names)):
        assert closed in reachable(table, state)


def test_the_pool_rule_a_replica_connection_is_idle_only_when_connected_or_answered_after_its_request_was_out():
    into_idle = {pair for pair, nxt in states.UPSTREAM.items() if nxt == states.U_IDLE}
    assert into_idle == {(states.U_CONNECTING, states.CONNECTED), (states.U_AWAITING, states.ANSWERED)}
    # An answer that ends before the request was written whole leaves the connection out of step.
    assert move(states.UPSTREAM, states.U_SENDING, states.ANSWERED) == states.U_CLOSED
    # Only an idle connection takes a request; only a sent one may switch to a tunnel.
    assert {state for (state, event) in states.UPSTREAM if event == states.ASSIGNED} == {states.U_IDLE}
    assert {state for (state, event) in states.UPSTREAM if event == states.SWITCHED} == {states.U_AWAITING}
    # A tunnel never returns to the pool: its only way out is closing.
    assert reachable(states.UPSTREAM, states.U_TUNNEL) == {states.U_TUNNEL, states.U_CLOSED}


def test_a_kept_alive_replica_connection_cycles_through_whole_exchanges():
    state = move(states.UPSTREAM, states.U_CONNECTING, states.CONNECTED)
    for _ in range(3):
        for event in (states.ASSIGNED, states.SENT, states.ANSWERED):
            state = move(states.UPSTREAM, state, event)
        assert state == states.U_IDLE
    with pytest.raises(ProtocolViolation):
        move(states.UPSTREAM, state, states.SENT)  # nothing was assigned


def test_the_client_machine_reads_requests_until_an_upgrade_decides_the_connection():
    state = states.C_IDLE
    for event in (states.HEAD_BYTES, states.HEAD_DONE, states.HEAD_BYTES, states.HEAD_BODY, states.BODY_DONE):
        state = move(states.CLIENT, state, event)
    assert state == states.C_IDLE
    upgrading = move(states.CLIENT, move(states.CLIENT, state, states.HEAD_BYTES), states.HEAD_UPGRADE)
    assert upgrading == states.C_UPGRADE
    # While an upgrade is out nothing is parsed: no head can start until the replica answers.
    assert {event for (at, event) in states.CLIENT if at == states.C_UPGRADE} == {
        states.UPGRADED,
        states.REFUSED,
        states.CLOSE,
    }
    assert move(states.CLIENT, upgrading, states.REFUSED) == states.C_CLOSED
    tunnel = move(states.CLIENT, upgrading, states.UPGRADED)
    assert reachable(states.CLIENT, tunnel) == {states.C_TUNNEL, states.C_CLOSED}
