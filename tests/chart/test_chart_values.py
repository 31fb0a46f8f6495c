"""The chart's defaults agree with the operator's: a value the chart sets overrides the operator's own default."""

from __future__ import annotations

from pathlib import Path

import yaml

from quantum_trader_operator.desired import MANAGED_REDIS_IMAGE

VALUES = Path(__file__).resolve().parents[2] / "charts" / "quantum-trader" / "values.yaml"


def test_managed_redis_image_is_the_operators_digest_pinned_default() -> None:
    image = yaml.safe_load(VALUES.read_text())["managedRedis"]["image"]
    assert "@sha256:" in image, "the managed Redis runs by digest, never by a tag that can move"
    assert image == MANAGED_REDIS_IMAGE
