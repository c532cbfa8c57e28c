"""A disk that fills up, for the spool's tests: ``Spool(path, opener=FullDisk(3000).open)``.

``FullDisk.open`` opens the real file (unbuffered, appending, as the spool does) and hands
back a file object whose writes behave like ``write(2)`` on a disk with ``free`` bytes
left: a write larger than what is left writes what fits and returns that short count, the
next one raises ``OSError(ENOSPC)``. Truncating gives the space back, as on a real disk.
``make_room(n)`` frees ``n`` more bytes (someone deleted a file).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any


class FullDisk:
    def __init__(self, free: int) -> None:
        self.free = free
        self.refused = 0
        """How many writes found the disk full."""

    def make_room(self, n: int) -> None:
        self.free += n

    def open(self, path: Path) -> _FillingFile:
        return _FillingFile(self, open(path, "a+b", buffering=0))  # noqa: SIM115 - closed by the caller


class _FillingFile:
    def __init__(self, disk: FullDisk, f: Any) -> None:
        self._disk, self._f = disk, f

    def write(self, data: bytes | memoryview) -> int:
        if self._disk.free <= 0:
            self._disk.refused += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fits = bytes(data[: self._disk.free])
        written = int(self._f.write(fits))
        self._disk.free -= written
        return written

    def truncate(self, size: int) -> int:
        before = self._f.seek(0, os.SEEK_END)
        self._f.truncate(size)
        self._disk.free += max(before - size, 0)
        return size

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return int(self._f.seek(offset, whence))

    def read(self, n: int = -1) -> bytes:
        return bytes(self._f.read(n))

    def fileno(self) -> int:
        return int(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> _FillingFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
