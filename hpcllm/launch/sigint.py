"""Ctrl-C deferred over a step that must not be cut in two.

Between ``sbatch --hold`` and the manifest that records the job, an interrupt would leave a held job
that no run names (``hpcllm.launch.backends.orphans`` cancels those on the next submit; SIGKILL
cannot be deferred). Inside ``deferred()`` a SIGINT is only noted; it is raised, as the usual
KeyboardInterrupt, once the step is done.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold back SIGINT until the block ends (signals can be handled in the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def note(signum: int, _frame: FrameType | None) -> None:
        caught.append(signum)

    previous = signal.signal(signal.SIGINT, note)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)
        if caught:
            signal.raise_signal(signal.SIGINT)  # now, to the handler that was there before
