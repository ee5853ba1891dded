"""``recaption report RUN``: a run as one self-contained HTML page (see :mod:`recaption.report.page`)."""

from __future__ import annotations

from recaption.report.page import REPORT_FILE, build_html, write_report

__all__ = ["REPORT_FILE", "build_html", "write_report"]
