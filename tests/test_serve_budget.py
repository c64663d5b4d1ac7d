"""The budgets shared by requests (gainx.serve.budget): room, order of waiting, giving back."""

from __future__ import annotations

import asyncio

import pytest

from gainx.serve.budget import Budget


def test_try_take_takes_only_what_fits() -> None:
    budget = Budget(10)
    assert budget.try_take(6) and not budget.try_take(5) and budget.try_take(4)
    assert budget.held == 10
    budget.give(10)
    assert budget.held == 0
    with pytest.raises(ValueError, match="cannot take 11 units of a budget of 10"):
        budget.try_take(11)


def test_waiters_are_served_first_come_first_served() -> None:
    """A large claim at the head of the line is not overtaken by a small one that would fit sooner."""

    async def main() -> list[str]:
        budget, order = Budget(10), []
        budget.try_take(8)

        async def claim(name: str, units: int) -> None:
            await budget.take(units)
            order.append(name)

        large = asyncio.ensure_future(claim("large", 9))
        await asyncio.sleep(0)
        small = asyncio.ensure_future(claim("small", 1))
        await asyncio.sleep(0)
        assert order == [] and not budget.try_take(1)  # the small one fits, but waits behind the large one
        budget.give(8)
        await asyncio.gather(large, small)
        assert budget.held == 10
        return order

    assert asyncio.run(main()) == ["large", "small"]


async def _two_waiters(held: int, first: int, second: int) -> tuple[Budget, asyncio.Future, asyncio.Future]:
    """A ``Budget(10)`` with ``held`` taken and two waiters queued on it: for ``first``, then for ``second``."""
    budget = Budget(10)
    budget.try_take(held)
    front = asyncio.ensure_future(budget.take(first))
    await asyncio.sleep(0)
    back = asyncio.ensure_future(budget.take(second))
    await asyncio.sleep(0)
    return budget, front, back


def test_a_cancelled_waiter_takes_nothing_and_lets_the_next_in() -> None:
    async def main() -> int:
        budget, stuck, after = await _two_waiters(5, 8, 5)
        assert not after.done()  # behind the 8
        stuck.cancel()
        await asyncio.wait_for(after, 1)  # let in as soon as the 8 in front of it gives up
        assert stuck.cancelled()
        return budget.held

    assert asyncio.run(main()) == 10


def test_giving_back_right_after_a_waiter_is_cancelled() -> None:
    """Room given back before a just-cancelled waiter has run goes to the next in line, not to the cancelled one."""

    async def main() -> int:
        budget, cancelled, after = await _two_waiters(10, 4, 6)
        cancelled.cancel()  # its future is cancelled now; the task learns it on its next step
        budget.give(10)
        await asyncio.wait_for(after, 1)
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        return budget.held

    assert asyncio.run(main()) == 6


def test_a_hold_gives_everything_back_on_exit() -> None:
    budget = Budget(100)
    with pytest.raises(RuntimeError), budget.hold() as held:
        assert held.try_add(30) and held.try_add(30) and not held.try_add(50)
        assert budget.held == 60
        raise RuntimeError("the request failed")
    assert budget.held == 0
    with budget.hold() as held:
        held.try_add(40)
        held.release()
        assert budget.held == 0
    assert budget.held == 0
