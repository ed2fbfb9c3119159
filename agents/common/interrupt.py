"""Ctrl-C during training: finish the current update, write a final checkpoint, then stop.

Python turns SIGINT into ``KeyboardInterrupt`` wherever the main thread happens to be -- in the
middle of an optimiser step, between two parameters, a checkpoint saved from there would hold
half an update. ``graceful_sigint`` replaces that, for the duration of a training loop, with a
flag the loop checks between updates; a second Ctrl-C raises ``KeyboardInterrupt`` at once
(the last complete checkpoint stands).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Callable


@contextlib.contextmanager
def graceful_sigint(request_stop: Callable[[], None], is_requested: Callable[[], bool],
                    message: str = "finishing the current update and saving a checkpoint"):
    """While active, the first SIGINT calls ``request_stop()``; the next raises KeyboardInterrupt.

    Only the main thread can own signal handlers: elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if is_requested():
            raise KeyboardInterrupt
        request_stop()
        print(f"svl-drl: interrupted -- {message} (press Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    old = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
