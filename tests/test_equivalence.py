"""TOST against a hand computation on fixed numbers."""

from __future__ import annotations

import math

import pytest

from adaptive_lora.analysis.equivalence import tost_paired


def test_tost_matches_a_hand_computed_example():
    # d = [0.01, -0.02, 0.00, 0.01, 0.02]: mean 0.004, sd = sqrt(0.00023) = 0.0151658,
    # se = 0.0067823; margin 0.03, df 4.
    # t_lower = (0.004 + 0.03) / 0.0067823 = 5.01303, t_upper = (0.004 - 0.03) / 0.0067823
    # = -3.83349. For 4 degrees of freedom the t CDF is closed-form: F(t) = 1/2 +
    # (3/4)(u - u^3/3) with u = t / sqrt(t^2 + 4): P(T4 > 5.01303) = 0.003710,
    # P(T4 < -3.83349) = 0.009279.
    # 90% interval: 0.004 ± 2.131847 * 0.0067823 = [-0.010459, 0.018459] inside ±0.03.
    result = tost_paired([0.01, -0.02, 0.00, 0.01, 0.02], margin=0.03)
    assert result["mean"] == pytest.approx(0.004)
    assert result["t_lower"] == pytest.approx(5.01303, rel=1e-5)
    assert result["t_upper"] == pytest.approx(-3.83349, rel=1e-5)
    assert result["p_lower"] == pytest.approx(0.003710, rel=1e-3)
    assert result["p_upper"] == pytest.approx(0.009279, rel=1e-3)
    assert result["p"] == result["p_upper"]
    assert result["ci"] == pytest.approx([-0.010459, 0.018459], abs=1e-6)
    assert result["equivalent"] is True


def test_a_narrow_margin_is_not_equivalent():
    result = tost_paired([0.01, -0.02, 0.00, 0.01, 0.02], margin=0.01)
    assert result["equivalent"] is False and result["p"] > 0.05


def test_too_few_pairs_say_so():
    result = tost_paired([0.01], margin=0.1)
    assert result["equivalent"] is None and math.isnan(result["p"])


def test_the_margin_must_be_positive():
    with pytest.raises(ValueError, match="margin must be > 0"):
        tost_paired([0.1, 0.2], margin=0)
