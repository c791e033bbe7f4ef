"""The ids a table shows (``ee traces list``): unique among every id of the store, and for ids of a name and hex digits
(curriculum tasks' ``curriculum-<16 hex>``) with enough of the digits to stay unique as the store grows."""

from __future__ import annotations

from ee_middleware.cli.common import short_ids


def test_a_named_id_shows_eight_of_its_digits_and_a_recorded_id_twelve_characters() -> None:
    """Was (sweep S2): ``curriculum-e``, unique in that store and ambiguous after the next curriculum run."""
    ids = ["curriculum-e3f0a1b2c3d4e5f6", "3f2a9c1d0b7e4a5f8c6d0e1f", "deadbeef0011223344556677"]
    assert short_ids(ids) == {
        "curriculum-e3f0a1b2c3d4e5f6": "curriculum-e3f0a1b2",
        "3f2a9c1d0b7e4a5f8c6d0e1f": "3f2a9c1d0b7e",  # hex from the start: twelve characters, as before
        "deadbeef0011223344556677": "deadbeef0011",
    }


def test_ids_sharing_their_start_are_shown_as_long_as_it_takes() -> None:
    shown = short_ids(["curriculum-e3f0a1b2c3d4e5f6"], among=["curriculum-e3f0a1b2ffffffff"])
    assert shown == {"curriculum-e3f0a1b2c3d4e5f6": "curriculum-e3f0a1b2c"}
