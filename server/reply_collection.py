"""Send a round's messages and collect the replies as soon as they arrive.

Flower's ``Grid.send_and_receive`` checks for replies every 3 s on a deployed
SuperLink (``HttpGrid``) and every 0.1 s in simulation, so a deployed round whose
nodes answer within half a second still takes 3 s. The coordinator pushes the
messages itself and pulls at a short interval that backs off while nothing
arrives: a handful of cheap loopback requests per second instead of seconds of
idle waiting per round.

In simulation (Flower's ``InMemoryGrid``) a pull is a call into the engine's
state in this very process, not a request: the coordinator looks every
``IN_PROCESS_POLL_S`` without backing off, so the round's last reply is seen
within 0.01 s instead of up to 0.1-0.2 s after it arrives (at 10 clients that
wait was a quarter of a round's overhead).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable

from flwr.app import Message
from flwr.serverapp import Grid

FIRST_POLL_S = 0.05  # a reply may already be there a moment after the push
MAX_POLL_S = 0.5  # bounds how late a reply is noticed once nodes are slow
# Simulation: a pull of 100 pending replies costs the engine's process under
# a millisecond (0.8 ms measured), so a 0.01 s look costs little and waits little.
IN_PROCESS_POLL_S = 0.01
_IN_MEMORY_GRID_MODULE = "flwr.superlink.grid.inmemory_grid"


def poll_intervals(grid: Grid) -> tuple[float, float]:
    """Return the first and the longest wait between pulls on ``grid``.

    ``(IN_PROCESS_POLL_S, IN_PROCESS_POLL_S)`` for Flower's simulation grid,
    ``(FIRST_POLL_S, MAX_POLL_S)`` for any other (a SuperLink over the network).
    """
    # Looked up, not imported: importing Flower's SuperLink grids costs a
    # deployed ServerApp almost a second, and a simulation has them loaded.
    module = sys.modules.get(_IN_MEMORY_GRID_MODULE)
    if module is not None and isinstance(grid, module.InMemoryGrid):
        return IN_PROCESS_POLL_S, IN_PROCESS_POLL_S
    return FIRST_POLL_S, MAX_POLL_S


def send_and_collect(
    grid: Grid,
    messages: Iterable[Message],
    *,
    timeout_s: float,
    clock: Callable[[], float] | None = None,
    sleep: Callable[[float], None] | None = None,
) -> list[Message]:
    """Push ``messages`` and return the replies that arrive within ``timeout_s``.

    Parameters
    ----------
    grid : Grid
        The ServerApp's grid (deployment or simulation).
    messages : iterable of Message
        One instruction per node.
    timeout_s : float
        Seconds to wait for replies after the push; replies that come later are
        left out, as with Flower's ``send_and_receive``.
    clock, sleep : callables or None
        Time source and sleeper; None means ``time.monotonic`` and ``time.sleep``.

    Returns
    -------
    list of Message
        The replies received, error replies included; a message the SuperLink
        would not take, or whose node did not answer in time, has none.
    """
    clock = clock or time.monotonic
    sleep = sleep or time.sleep
    pending = {message_id for message_id in grid.push_messages(messages) if message_id}
    replies: list[Message] = []
    deadline = clock() + timeout_s
    first_poll_s, max_poll_s = poll_intervals(grid)
    interval = first_poll_s
    while pending:
        arrived = list(grid.pull_messages(pending))
        replies.extend(arrived)
        pending.difference_update(m.metadata.reply_to_message_id for m in arrived)
        remaining = deadline - clock()
        if not pending or remaining <= 0:
            break
        # Replies of one round tend to come close together: look again soon
        # after one arrives (this very wait is short), and back off while none
        # does.
        if arrived:
            interval = first_poll_s
        sleep(min(interval, remaining))
        interval = min(2 * interval, max_poll_s)
    return replies
