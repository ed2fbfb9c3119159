"""File modes for atomic writes.

``tempfile.mkstemp`` creates its file with mode 0600 whatever the umask (it must: the name is
guessable), and renaming it into place keeps that mode. Atomic writers therefore chmod the
temporary file to what ``open()`` would have given a new file before the rename.
"""

from __future__ import annotations

import os


def umask() -> int:
    """The process's umask, read without changing it where Linux reports it (``os.umask`` can
    only be read by setting it, which would briefly apply to files other threads create)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """``0o666 & ~umask``: the mode of a file ``open(path, "w")`` creates (0644 under umask 022)."""
    return 0o666 & ~umask()


def chmod_like_new_file(path) -> None:
    """Give ``path`` (a ``mkstemp`` file about to be renamed into place) the mode of a new file."""
    os.chmod(path, new_file_mode())
