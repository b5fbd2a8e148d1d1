"""How far the evaluator may judge silence: to the latest look at sound input streams, once each
partition mirror holds what its family stream held at that look."""

from __future__ import annotations

import math

from evaluator.sound_inputs import SoundInputs


def test_nothing_is_judged_before_the_first_sound_look() -> None:
    assert SoundInputs().until == -math.inf


def test_unpartitioned_a_sound_look_is_sound_from_its_start() -> None:
    sound = SoundInputs()
    assert sound.passed(10.0, [5, 7, 9], [])
    assert sound.until == 10.0
    assert sound.passed(11.0, [6, 7, 9], [])
    assert sound.until == 11.0


def test_a_mirror_behind_its_family_holds_back_until_it_has_copied_what_the_family_held() -> None:
    sound = SoundInputs()
    assert sound.passed(10.0, [100, 50], [100, 50])
    # the second mirror has not copied messages 51-60 yet: what they tell may still come
    assert not sound.passed(11.0, [110, 60], [110, 55])
    assert sound.until == 10.0
    # by the next look it holds what the family held at 11.0, not yet what it holds at 12.0
    assert sound.passed(12.0, [120, 70], [115, 65])
    assert sound.until == 11.0
    assert sound.passed(13.0, [120, 70], [120, 70])
    assert sound.until == 13.0


def test_a_mirror_that_never_catches_up_keeps_the_silence_unjudged() -> None:
    sound = SoundInputs()
    sound.passed(10.0, [10], [10])
    for second in range(11, 100):
        assert not sound.passed(float(second), [second], [10])
    assert sound.until == 10.0


def test_how_long_the_mirrors_have_been_behind_is_told_from_the_first_look_that_found_them_so() -> None:
    sound = SoundInputs()
    sound.passed(10.0, [10], [10])
    assert sound.behind_since is None
    sound.passed(11.0, [20], [15])
    sound.passed(12.0, [30], [18])
    assert sound.behind_since == 11.0
    sound.passed(13.0, [30], [30])
    assert sound.behind_since is None


def test_what_a_family_lost_to_a_leader_change_is_not_waited_for() -> None:
    """The old leader reported 950 messages; the new one has 900 (the rest was never replicated),
    and no agent publishes more: the mirror holding the 900 is caught up."""
    sound = SoundInputs()
    sound.passed(10.0, [950], [940])
    assert sound.passed(11.0, [900], [900])
    assert sound.until == 11.0
