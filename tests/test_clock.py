"""SteadyClock (issue 12): cache time that never runs backwards when the wall clock steps."""

from __future__ import annotations

from mtasts.clock import SteadyClock

from .conftest import FakeClock


def test_follows_the_wall_clock_until_it_steps() -> None:
    clock = FakeClock(1000.0)
    steady = SteadyClock(clock, clock.monotonic)
    assert steady.now() == 1000.0
    clock.advance(5)
    assert steady.now() == 1005.0 and steady.offset == 0.0 and steady.fast is clock


def test_a_step_back_is_absorbed_and_real_time_goes_on() -> None:
    clock = FakeClock(1000.0)
    steady = SteadyClock(clock, clock.monotonic)
    steady.now()
    clock.step(-86_400)
    assert steady.now() == 1000.0  # continues where it was
    clock.advance(30)
    assert steady.now() == 1030.0 and steady.fast() == 1030.0
    assert steady.to_wall(1030.0) == clock.now and steady.from_wall(clock.now) == 1030.0
    assert steady.steps == 1


def test_a_step_back_while_nothing_was_read_is_seen_on_the_monotonic_clock() -> None:
    clock = FakeClock(1000.0)
    steady = SteadyClock(clock, clock.monotonic)
    steady.now()
    clock.advance(600)  # ten minutes with no reading ...
    clock.step(-300)  # ... and a step back smaller than that
    assert steady.now() == 1600.0


def test_slewing_and_forward_jumps_are_taken_as_they_come() -> None:
    clock = FakeClock(1000.0)
    steady = SteadyClock(clock, clock.monotonic)
    steady.now()
    clock.advance(3600)
    clock.step(-0.5)  # NTP slew-sized: within the tolerance
    assert steady.now() == 4599.5 and steady.steps == 0
    clock.step(86_400)  # forward: entries may only expire sooner
    assert steady.now() == 90_999.5 and steady.offset == 0.0


def test_never_earlier_than_a_reading_handed_out_by_a_hot_path() -> None:
    clock = FakeClock(1000.0)
    steady = SteadyClock(clock, clock.monotonic)
    steady.now()
    clock.advance(10)
    steady.last = steady.fast()  # what the resolver's hot path does
    clock.step(-100)
    assert steady.now() == 1010.0
