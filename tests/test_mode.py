"""Mode: settled once from --mode/--level, prune.json's choice and the model's heads."""

from __future__ import annotations

import pytest
import torch

from unetpp.errors import UnetppError
from unetpp.models import Mode, combine_heads, resolve_mode

HEADS = (1, 2, 3, 4)


def test_defaults_follow_the_heads_and_the_choice():
    assert resolve_mode(HEADS, 4) == Mode.accurate() == ("accurate", None)
    assert resolve_mode((4,), 4) == Mode.fast(4)  # one head: that head
    assert resolve_mode(HEADS, 4, chosen=Mode.fast(2)) == ("fast", 2)
    assert resolve_mode(HEADS, 4, mode="fast", chosen=Mode.fast(2)) == ("fast", 2)
    assert resolve_mode(HEADS, 4, mode="fast", chosen=Mode.accurate()) == ("fast", 4)
    assert resolve_mode(HEADS, 4, mode="accurate", chosen=Mode.fast(2)) == Mode.accurate()
    assert resolve_mode(HEADS, 4, level=1, chosen=Mode.accurate()) == ("fast", 1)


@pytest.mark.parametrize("kwargs,message", [
    (dict(mode="slow"), "--mode must be one of accurate, fast, got 'slow'"),
    (dict(mode="accurate", level=2), "--level is for fast mode"),
    (dict(level=5), "--level 5: the network has depth 4, so levels are 1..4"),
    (dict(level="2"), "--level must be an integer"),
])
def test_bad_flags_are_one_line_naming_the_flag(kwargs, message):
    with pytest.raises(UnetppError, match=message):
        resolve_mode(HEADS, 4, **kwargs)


def test_a_choice_that_does_not_fit_the_model_is_refused():
    with pytest.raises(UnetppError, match="trained without deep supervision and has only level 4"):
        resolve_mode((4,), 4, chosen=Mode.fast(2))


def test_json_round_trip_and_text():
    for mode in (Mode.accurate(), Mode.fast(3)):
        assert Mode.from_json(mode.to_json()) == mode
    assert str(Mode.fast(3)) == "fast L3" and str(Mode.accurate()) == "accurate"
    with pytest.raises(UnetppError, match="prune.json: fast mode needs an integer level"):
        Mode.from_json({"mode": "fast", "level": None}, "prune.json")


def test_combine_heads_is_the_mean_or_one_level():
    probs = {lv: torch.full((1, 2, 2), float(lv)) for lv in HEADS}
    assert torch.equal(combine_heads(probs, Mode.accurate()), torch.full((1, 2, 2), 2.5))
    assert torch.equal(combine_heads(probs, Mode.fast(3)), probs[3])
    assert Mode.accurate().levels(HEADS) == HEADS and Mode.fast(2).levels(HEADS) == (2,)
