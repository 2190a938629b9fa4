"""Reports, built from the tracking store alone: store -> summary -> tables, figures, html.

``write_report`` writes one; ``markdown_table`` prints the summary table in a terminal.
"""

from bench.report.summary import markdown_table
from bench.report.write import write_report

__all__ = ["markdown_table", "write_report"]
