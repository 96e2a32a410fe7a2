"""A background thread that runs an iterator a few items ahead of its consumer."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

_T = TypeVar("_T")
_DONE = object()


@dataclass(frozen=True)
class _Failure:
    error: BaseException  # raised by the producer; re-raised in the consumer


def prefetch(source: Iterable[_T], depth: int) -> Iterator[_T]:
    """Iterates ``source`` in a background thread, at most ``depth`` items ahead.

    Exceptions of the thread are re-raised in the consumer; when the consumer
    stops early (``break``, ``close()``, garbage collection) the thread is
    told to stop and joined, so no thread outlives the iteration.

    Example::

        >>> list(prefetch(range(5), depth=2))
        [0, 1, 2, 3, 4]
    """
    if depth < 1:
        raise ValueError(f"prefetch depth must be >= 1, got {depth}")
    slots: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue  # the consumer is slow: wait again unless told to stop
        return False

    def work() -> None:
        it = iter(source)
        try:
            for item in it:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            put(_Failure(e))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    def consume() -> Iterator[_T]:
        thread = threading.Thread(target=work, name="mmctr-reader-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                item = slots.get()
                if item is _DONE:
                    return
                if isinstance(item, _Failure):
                    raise item.error
                yield item  # type: ignore[misc]
        finally:
            stop.set()
            thread.join()

    return consume()
