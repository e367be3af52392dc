"""Send a round's messages and collect the replies as soon as they arrive.

Flower's ``Grid.send_and_receive`` checks for replies every 3 s on a deployed
SuperLink (``HttpGrid``) and every 0.1 s in simulation, so a deployed round whose
nodes answer within half a second still takes 3 s. The coordinator pushes the
messages itself and pulls at a short interval that backs off while nothing
arrives: a handful of cheap loopback requests per second instead of seconds of
idle waiting per round.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from flwr.app import Message
from flwr.serverapp import Grid

FIRST_POLL_S = 0.05  # a reply may already be there a moment after the push
MAX_POLL_S = 0.5  # bounds how late a reply is noticed once nodes are slow


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
    interval = FIRST_POLL_S
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
            interval = FIRST_POLL_S
        sleep(min(interval, remaining))
        interval = min(2 * interval, MAX_POLL_S)
    return replies
