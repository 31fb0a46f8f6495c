"""The chart's copy of the CRDs passes the API server's checks of every default (harness/crd_defaults.py).

`helm install` creates the CRDs from crds-src/ (templates/crds.yaml adds only the keep annotation); a default the API
server refuses there makes the whole release fail, so both the copy and what helm renders from it are checked.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from harness.crd_defaults import default_violations
from tests.chart.chartlib import CHART, find

CHART_CRDS = sorted((CHART / "crds-src").glob("*.yaml"))


def test_the_chart_carries_every_crd() -> None:
    assert [p.name for p in CHART_CRDS] == ["exitrollouts.yaml", "killswitches.yaml", "tradingpolicies.yaml"]


@pytest.mark.parametrize("path", CHART_CRDS, ids=[p.name for p in CHART_CRDS])
def test_chart_crd_defaults_pass_the_api_server_checks(path: Path) -> None:
    assert default_violations(yaml.safe_load(path.read_text())) == []


def test_rendered_chart_crd_defaults_pass_the_api_server_checks(rendered) -> None:
    crds = find(rendered("default"), "CustomResourceDefinition")
    assert len(crds) == len(CHART_CRDS)
    for crd in crds:
        assert default_violations(crd) == [], crd["metadata"]["name"]
