"""λD and λU: continuous in the counts, by name, and an override checked against the band."""

from __future__ import annotations

import pytest

from ingest.curate.balance import BAND, ClassWeights, band_warning, class_weights


def test_weights_are_continuous_in_the_counts_and_land_in_the_band():
    previous = None
    for n_desirable in range(20, 400):
        w = class_weights(n_desirable, 100)
        assert w.in_band
        if previous is not None:  # one more thumbs-up moves a weight by at most its own share (1/n), never a jump
            for name in ("desirable_weight", "undesirable_weight"):
                step = abs(getattr(w, name) / getattr(previous, name) - 1)
                assert step <= 1.01 / (n_desirable - 1)
        previous = w
    # The old rule jumped from ratio 1.33 (133:100) to 1.00 (134:100).
    assert class_weights(133, 100).ratio == pytest.approx(1.33)
    assert class_weights(134, 100).ratio == pytest.approx(4 / 3) and class_weights(134, 100).undesirable_weight == \
        pytest.approx(1.005)
    assert class_weights(99, 100).desirable_weight == pytest.approx(100 / 99)  # ratio 1: the lower edge


def test_the_weights_are_named_fields_not_a_pair_that_could_be_swapped():
    w = class_weights(100, 1000)
    assert (w.desirable_weight, w.undesirable_weight, w.n_desirable, w.n_undesirable) == (10.0, 1.0, 100, 1000)
    swapped = ClassWeights(desirable_weight=w.undesirable_weight, undesirable_weight=w.desirable_weight,
                           n_desirable=100, n_undesirable=1000)
    assert not swapped.in_band and swapped.ratio == pytest.approx(0.01)


def test_an_override_outside_the_band_is_named_with_both_sources():
    inside = ClassWeights(desirable_weight=1.2, undesirable_weight=1.0, n_desirable=100, n_undesirable=100)
    assert band_warning(inside) is None
    outside = ClassWeights(desirable_weight=4.0, undesirable_weight=1.0, n_desirable=100, n_undesirable=100)
    message = band_warning(outside)
    assert "= 4" in message and "outside [1, 4/3]" in message and "[1, 1.5]" in message and "thumbs-up" in message
    assert BAND == (1.0, 4 / 3)
