"""Report statistics against values worked out by hand (closed forms of the t distribution)."""

import math

import pytest
from scipy import stats as sps

from bench.report.stats import ci_half_width, welch


def t2_quantile(p: float) -> float:
    """Student t with 2 degrees of freedom has CDF 1/2 + t / (2 sqrt(2 + t^2)); solved for t."""
    c = 2 * p - 1  # = t / sqrt(2 + t^2)
    return math.sqrt(2 * c * c / (1 - c * c))


def test_ci_half_width_three_seeds():
    # values 1, 2, 3: mean 2, sample sd 1; t_{0.975, 2} = sqrt(2 * .95^2 / (1 - .95^2)) = 4.3027
    q = t2_quantile(0.975)
    assert q == pytest.approx(4.302653, abs=1e-6)
    assert ci_half_width([1.0, 2.0, 3.0]) == pytest.approx(q / math.sqrt(3), rel=1e-9)  # 2.4841
    assert ci_half_width([10.0, 12.0, 14.0]) == pytest.approx(2 * q / math.sqrt(3), rel=1e-9)
    # a 90% interval uses t_{0.95, 2} = 2.9200
    assert ci_half_width([1.0, 2.0, 3.0], 0.90) == pytest.approx(t2_quantile(0.95) / math.sqrt(3), rel=1e-9)


def test_ci_is_undefined_for_one_seed_and_zero_without_spread():
    assert math.isnan(ci_half_width([0.5]))
    assert math.isnan(ci_half_width([0.5, float("nan")]))  # NaNs are not seeds
    assert ci_half_width([3.0625, 3.0625, 3.0625]) == 0.0


def test_welch_known_case():
    # [0, 2] vs [3, 5]: means 1 and 4, both variances 2, n = 2 -> se = sqrt(2/2 + 2/2) = sqrt(2),
    # t = -3 / sqrt(2); Welch-Satterthwaite df = (1 + 1)^2 / (1/1 + 1/1) = 2;
    # two-sided p for df 2 = 1 - |t| / sqrt(2 + t^2) = 1 - sqrt(4.5 / 6.5) = 0.16795
    w = welch([0.0, 2.0], [3.0, 5.0])
    assert w.t == pytest.approx(-3 / math.sqrt(2))
    assert w.df == pytest.approx(2.0)
    assert w.p == pytest.approx(1 - math.sqrt(4.5 / 6.5), rel=1e-9)
    assert not w.significant()


def test_welch_unequal_variances_cross_checked():
    a, b = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.0, 10.0, 12.0]
    va, vb = 5 / 3 / 4, 14 / 6  # sample variances 5/3 and 14, over n
    t = (2.5 - 7.0) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 5)
    w = welch(a, b)
    assert w.t == pytest.approx(t) and w.df == pytest.approx(df)
    assert w.p == pytest.approx(2 * sps.t.sf(abs(t), df))
    assert w.p == pytest.approx(sps.ttest_ind(a, b, equal_var=False).pvalue)
    assert w.significant()  # p = 0.032
    assert welch(b, a).p == pytest.approx(w.p)  # symmetric


def test_welch_two_constant_sides_with_different_means_differ():
    w = welch([1.0, 1.0], [2.0, 2.0])  # e.g. two deterministic codecs over seeds
    assert w.p == 0 and w.significant() and w.t == -math.inf


def test_welch_undefined_cases():
    assert math.isnan(welch([1.0], [2.0, 3.0]).p)  # one seed
    assert math.isnan(welch([1.0, 1.0], [1.0, 1.0]).p)  # no spread on either side, equal means
    assert not welch([1.0], [2.0, 3.0]).significant()



def test_cost_cells_show_the_mean_with_the_range_not_an_interval():
    from bench.report.tables import stat_cell

    nan = float("nan")
    cost = {"kind": "cost", "applies": True, "mean": 200.0, "ci95": 50.0, "min": 100.0, "max": 300.0, "n": 3}
    assert stat_cell(cost, 3).text == "200 (100–300)"
    same = cost | {"mean": 2.5, "min": 2.5, "max": 2.5, "ci95": nan}
    assert stat_cell(same, 3).text == "2.5"
