"""Reports, built from the tracking store alone: store -> summary (long format) -> the answer per
use (``uses``), tables, figures, html.

``write_report`` writes one; ``terminal_summary`` prints the answers and tables in a terminal.
"""

from bench.report.tables import markdown_table, terminal_summary
from bench.report.write import write_report

__all__ = ["markdown_table", "terminal_summary", "write_report"]
