"""Two writers on the same rows, made to meet deterministically: the second runs on a thread of its own and is
caught as it calls the function that leads it to the lock, while the first still holds its transaction."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest


class Contender:
    """`work` on a thread of its own; `arrive()` returns once it has called `owner.function_name` (the step
    before the lock) — with `after`, once that call has returned (a read the lock should have made wait) —
    `finish()` once it is done, raising what it raised."""

    def __init__(
        self,
        monkeypatch: pytest.MonkeyPatch,
        owner: object,
        function_name: str,
        work: Callable[[], None],
        *,
        after: bool = False,
    ) -> None:
        self._arrived = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(work,), name=f"contender-{id(self)}")
        function = getattr(owner, function_name)

        def arriving(*args: Any, **kwargs: Any) -> Any:
            mine = threading.current_thread() is self._thread
            if mine and not after:
                self._arrived.set()
            try:
                return function(*args, **kwargs)
            finally:
                if mine:
                    self._arrived.set()

        monkeypatch.setattr(owner, function_name, arriving)
        self._function_name = function_name

    def _run(self, work: Callable[[], None]) -> None:
        try:
            work()
        except BaseException as error:  # handed to the test's thread by finish()
            self._error = error

    def arrive(self, timeout: float = 10.0, or_waiting: Callable[[], bool] | None = None) -> None:
        """Start it and return once it has called the function — or, with `or_waiting`, once that says it
        waits on a lock instead (checked every 10 ms)."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._arrived.wait(0.01):
            if or_waiting is not None and or_waiting():
                return
            if time.monotonic() > deadline:
                self.finish()  # its own failure first, if it had one
                raise AssertionError(f"the second writer never reached {self._function_name}")

    def finish(self, timeout: float = 30.0) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the second writer did not finish"
        if self._error is not None:
            raise self._error
