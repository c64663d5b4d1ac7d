"""Budgets shared by all requests: request body bytes and decoded pixels held at once.

A :class:`Budget` holds at most ``limit`` units in all. :meth:`Budget.take`
waits for room, first come first served (a large claim at the head of the
line is not overtaken by small ones, so it cannot starve);
:meth:`Budget.try_take` takes room only when there is some now. A request
tracks what it holds in a :class:`Hold`, which gives it all back on exit, also
when the request fails or its client leaves.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager


class Budget:
    """``limit`` units (bytes, pixels) that requests hold for a while and give back."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"a budget needs a limit >= 1, got {limit}")
        self.limit = limit
        self.held = 0
        self._waiters: deque[tuple[int, asyncio.Future]] = deque()

    def _check(self, units: int) -> None:
        if not 0 <= units <= self.limit:
            raise ValueError(f"cannot take {units} units of a budget of {self.limit}")

    def try_take(self, units: int) -> bool:
        """Take ``units`` if they fit now and nobody waits before; whether they were taken."""
        self._check(units)
        if self._waiters or self.held + units > self.limit:
            return False
        self.held += units
        return True

    async def take(self, units: int) -> None:
        """Take ``units``, waiting in line until they fit."""
        if self.try_take(units):
            return
        waiter = (units, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        try:
            await waiter[1]
        except asyncio.CancelledError:
            if waiter[1].done() and not waiter[1].cancelled():  # granted just as it was cancelled
                self.give(units)
            else:
                if waiter in self._waiters:  # not dropped by _wake already
                    self._waiters.remove(waiter)
                self._wake()  # the next in line may fit now
            raise

    def give(self, units: int) -> None:
        """Give back ``units`` taken before; wakes those waiting in line whose claims now fit."""
        self.held -= units
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            units, future = self._waiters[0]
            if future.done():  # cancelled, its task not yet told: it takes nothing
                self._waiters.popleft()
            elif self.held + units <= self.limit:
                self._waiters.popleft()
                self.held += units
                future.set_result(None)
            else:
                return

    @contextmanager
    def hold(self) -> Iterator[Hold]:
        """A :class:`Hold` on this budget, given back whole when the block ends."""
        held = Hold(self)
        try:
            yield held
        finally:
            held.release()


class Hold:
    """What one request holds of a :class:`Budget`."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.units = 0

    def try_add(self, units: int) -> bool:
        """Take ``units`` more if the budget has room now; whether it had."""
        if not self.budget.try_take(units):
            return False
        self.units += units
        return True

    def release(self) -> None:
        """Give back everything held (idempotent)."""
        units, self.units = self.units, 0
        if units:
            self.budget.give(units)
