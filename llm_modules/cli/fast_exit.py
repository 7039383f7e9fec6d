"""Let a short command's process exit without the cycle collector's last sweep.

At exit Python clears every module and collects the cycles left behind: with torch loaded that is
a sweep over hundreds of thousands of objects, 0.3 to 0.6 s of a command such as ``llm-modules
estimate`` that answers in about 1.5 s, spent on memory that the operating system takes back anyway.
``freeze_at_exit`` makes ``gc.freeze`` the first thing done at exit: every object alive then moves
to the collector's permanent generation, which no collection visits. Nothing else changes: output
streams are flushed as before, objects whose last reference goes are destroyed as before (their
``__del__`` runs), the other exit handlers run as before; only objects caught in reference cycles
at exit are left to the operating system instead of being torn down one by one.
"""

from __future__ import annotations

import atexit
import gc

_REGISTERED = [False]


def freeze_at_exit() -> None:
    """Register ``gc.freeze`` to run at interpreter exit (once per process); in-process callers
    (tests, notebooks) are unaffected until their own interpreter exits."""
    if not _REGISTERED[0]:
        atexit.register(gc.freeze)
        _REGISTERED[0] = True
