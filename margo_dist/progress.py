"""Progress bars for a person at a terminal, and nothing for a log file.

A job log under Ray (or any redirected stderr) is read as a file: a bar there is
thousands of carriage returns. So bars show only when asked for *and* stderr is a
terminal; the loops log one line per epoch either way.
"""

from __future__ import annotations

import sys
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def on_terminal() -> bool:
    """Is stderr an interactive terminal?"""
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def progress_bar(items: Iterable[T], total: int | None, desc: str, enabled: bool = True,
                 unit: str = "it") -> Iterator[T]:
    """``items`` with a tqdm bar when ``enabled`` and on a terminal, else ``items`` unchanged."""
    if not (enabled and on_terminal()):
        yield from items
        return
    from tqdm import tqdm

    yield from tqdm(items, total=total, desc=desc, leave=False, dynamic_ncols=True, unit=unit)
