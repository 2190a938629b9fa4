"""Numbers as the report shows them: a lossless codec's infinite PSNR, and log axes with plain labels."""

import math
import sys

import pandas as pd

from bench.report import figures
from bench.report.summary import _infinite, fmt_mean_ci, fmt_num
from bench.report.tables import stat_cell


def test_an_infinite_psnr_comes_back_from_the_store_and_reads_as_infinity():
    assert _infinite(sys.float_info.max) == math.inf  # how MLflow stores an infinite metric
    assert _infinite(-sys.float_info.max) == -math.inf
    assert _infinite(42.5) == 42.5
    assert fmt_num(math.inf) == "∞" and fmt_num(-math.inf) == "−∞" and fmt_num(math.nan) == ""
    assert fmt_mean_ci(math.inf, math.nan) == "∞"
    st = {"applies": True, "mean": math.inf, "ci95": math.nan, "kind": "metric", "n": 1, "best": True,
          "significant": False}  # fmt: skip
    cell = stat_cell(st, 1)
    assert cell.text == "∞" and cell.best
    assert stat_cell({**st, "mean": math.nan}, 1).text == "—"


def test_log_axes_are_labelled_in_plain_numbers():
    plt = figures._plt()  # the report's settings: suite text is never parsed as mathtext
    fig, ax = plt.subplots()
    bpp = pd.Series([0.08, 0.2, 0.7, 2.5, 5.2])
    ax.plot(bpp, bpp)
    figures._log_if_wide(ax, bpp, "x")
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    plt.close(fig)
    assert ax.get_xscale() == "log"
    assert labels and all("$" not in t and "mathdefault" not in t for t in labels), labels
    assert "0.1" in labels and "1" in labels
