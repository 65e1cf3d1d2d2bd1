import pytest

from loraprune.core.schedule import CubicSchedule, OneShotSchedule, build_schedule


def test_cubic_by_hand():
    s = CubicSchedule(final=0.5, total_steps=100, warmup=0.1, cooldown=0.1)
    assert s(0) == 0.0 and s(10) == 0.0
    assert s(90) == 0.5 and s(100) == 0.5
    # halfway through the ramp (step 50 of 10..90): 0.5 * (1 - 0.5**3)
    assert s(50) == pytest.approx(0.5 * (1 - 0.125))
    values = [s(i) for i in range(101)]
    assert values == sorted(values)


def test_one_shot():
    s = OneShotSchedule(0.3, at_step=5)
    assert s(4) == 0.0 and s(5) == 0.3


def test_bad_schedule():
    with pytest.raises(ValueError, match="unknown schedule"):
        build_schedule("exp", 0.5, 10)
    with pytest.raises(ValueError, match="warmup"):
        CubicSchedule(0.5, 10, warmup=0.6, cooldown=0.5)
