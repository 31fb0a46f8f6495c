"""Real training on a slice of the shared klines: reproducible digest, an artifact that verifies itself, and an
honest report (out-of-sample rows only, costs included, buy-and-hold and baseline beside the model)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from quantum_trader.ml.market_features import FEATURE_HASH
from quantum_trader.ml.models import TrainConfig
from quantum_trader.research.artifact import ArtifactError, artifact_digest, load_artifact, observed_digest
from quantum_trader.research.train import TrainSettings, train

FILES = ("BTCUSDT-1h-2023-01-01_2024-05-13.csv", "ETHUSDT-1h-2023-01-01_2024-05-13.csv")


def small(seed: int = 7, **overrides) -> TrainSettings:
    return TrainSettings(
        name="tiny",
        max_bars=1500,
        folds=2,
        embargo=12,
        model=TrainConfig(seed=seed, xgb_rounds=20, mlp_epochs=3, xgb_threads=2),
        **overrides,
    )


@pytest.fixture(scope="module")
def trained(shared_klines, tmp_path_factory):
    out = tmp_path_factory.mktemp("a") / "tiny"
    return train([shared_klines / f for f in FILES], out, small())


def test_the_same_seed_gives_the_same_digest_and_bytes(trained, shared_klines, tmp_path):
    again = train([shared_klines / f for f in FILES], tmp_path / "tiny", small())
    assert again.digest == trained.digest
    for name in ("manifest.json", "xgboost.json", "torch.pt"):
        assert (again.folder / name).read_bytes() == (trained.folder / name).read_bytes(), name


def test_another_seed_gives_another_digest(trained, shared_klines, tmp_path):
    other = train([shared_klines / f for f in FILES], tmp_path / "tiny", small(seed=8))
    assert other.digest != trained.digest


def test_the_digest_is_the_canonical_manifest_with_the_file_hashes(trained):
    manifest = json.loads((trained.folder / "manifest.json").read_text())
    assert artifact_digest(manifest) == trained.digest
    assert set(manifest["files"]) == {"xgboost.json", "torch.pt"}
    assert manifest["feature_set"]["hash"] == FEATURE_HASH
    assert manifest["label"]["horizon_bars"] == 6 and manifest["label"]["band_atr"] == 0.5
    assert manifest["training"]["range"]["end"] > manifest["training"]["range"]["start"]
    assert [d["file"] for d in manifest["training"]["data"]] == list(FILES)
    assert all(d["sha256"].startswith("sha256:") for d in manifest["training"]["data"])
    assert "accuracy" in manifest["metrics"] and "pnl" in manifest["metrics"]


def test_the_artifact_loads_and_predicts_like_training(trained):
    loaded = load_artifact("tiny", trained.digest, trained.folder.parent)
    x = np.random.default_rng(1).normal(0, 0.01, size=(5, len(loaded.manifest["feature_set"]["names"])))
    p_xgb, p_torch = loaded.ensemble.probabilities(x)
    assert p_xgb.shape == p_torch.shape == (5, 3)
    np.testing.assert_allclose(p_xgb.sum(axis=1), 1.0)
    np.testing.assert_allclose(p_torch.sum(axis=1), 1.0, rtol=1e-6)


def change_one_byte(data: bytes) -> bytes:
    """One digit past the middle turned into another digit (JSON stays valid), or a bit flipped in binary data."""
    changed = bytearray(data)
    middle = len(changed) // 2
    digits = [i for i in range(middle, len(changed)) if chr(changed[i]).isdigit()]
    if digits and data[:1] == b"{":
        i = digits[0]
        changed[i] = ord("7") if changed[i] != ord("7") else ord("3")
    else:
        changed[middle] ^= 0x01
    return bytes(changed)


@pytest.mark.parametrize("target", ["xgboost.json", "torch.pt", "manifest.json"])
def test_one_changed_byte_anywhere_is_refused(trained, tmp_path, target):
    copy = tmp_path / "tiny"
    shutil.copytree(trained.folder, copy)
    (copy / target).write_bytes(change_one_byte((copy / target).read_bytes()))
    with pytest.raises(ArtifactError) as caught:
        load_artifact("tiny", trained.digest, tmp_path)
    message = str(caught.value)
    assert "\n" not in message
    if target == "manifest.json":
        assert "the policy pins" in message or "not JSON" in message
    else:
        assert f"{target} has sha256:" in message and "was modified" in message
        assert caught.value.observed_digest and caught.value.observed_digest != trained.digest


def test_missing_unpinned_and_mismatching_artifacts_are_refused(trained, tmp_path):
    with pytest.raises(ArtifactError, match="no artifact folder"):
        load_artifact("absent", trained.digest, tmp_path)
    with pytest.raises(ArtifactError, match="pins no digest"):
        load_artifact("tiny", "", trained.folder.parent)
    with pytest.raises(ArtifactError, match="the policy pins sha256:0"):
        load_artifact("tiny", "sha256:" + "0" * 64, trained.folder.parent)
    assert observed_digest(trained.folder, "tiny")[0] == trained.digest


def test_the_report_is_out_of_sample_with_costs_and_both_comparisons(trained):
    summary = json.loads((trained.folder / "report" / "summary.json").read_text())
    assert summary["digest"] == trained.digest
    first_test = min(f["test_start"] for f in summary["folds"])
    assert summary["out_of_sample_range"]["start"] >= first_test
    assert summary["out_of_sample_rows"] == sum(f["test_rows"] for f in summary["folds"])
    for fold in summary["folds"]:
        assert fold["train_end"] < fold["test_start"] and fold["fit_end"] <= fold["train_end"]
    assert set(summary["pnl"]) == {"ensemble", "buy_and_hold", "baseline"}
    assert summary["cost_per_unit_traded"] == pytest.approx(0.0005)
    assert summary["pnl"]["buy_and_hold"]["fees_paid"] == pytest.approx(2 * 0.0005)  # one entry, one exit
    assert summary["pnl"]["baseline"]["fees_paid"] > 0
    html = (trained.folder / "report" / "index.html").read_text()
    for needed in ("Out of sample only", "buy and hold", "baseline-trend", "equity.png", "calibration.png",
                   "precision.png", trained.digest):
        assert needed in html, needed
    for png in ("equity.png", "calibration.png", "precision.png"):
        assert (trained.folder / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    thresholds = [row["threshold"] for row in summary["precision_by_threshold"]]
    assert thresholds == sorted(thresholds) and len(thresholds) > 10


def test_costs_lower_the_simulated_return(trained, shared_klines, tmp_path):
    free = train([shared_klines / f for f in FILES], tmp_path / "tiny", small(fee_rate=0.0, slippage_bps=0.0))
    assert free.digest != trained.digest  # the evaluation's costs are part of the manifest
    for name in ("buy_and_hold", "baseline"):
        assert free.summary["pnl"][name]["fees_paid"] == 0.0
        assert free.summary["pnl"][name]["total_return"] > trained.summary["pnl"][name]["total_return"], name


def test_the_compiled_trees_give_xgboosts_margins(trained, shared_klines):
    """ai-engine walks the trees itself for one row (xgboost's per-call cost is above a bar's budget)."""
    from quantum_trader.ml.labels import LabelSpec
    from quantum_trader.ml.models import CompiledTrees, xgb_margins
    from quantum_trader.research.dataset import load_series

    loaded = load_artifact("tiny", trained.digest, trained.folder.parent)
    trees = CompiledTrees((trained.folder / "xgboost.json").read_bytes())
    series = load_series(shared_klines / "AAVEUSDT-1h-2024-01-01_2025-12-31.csv", LabelSpec(6, 0.5), max_bars=800)
    x = series.features[~np.isnan(series.features).any(axis=1)]
    x = np.vstack([x, np.where(np.arange(x.shape[1]) % 3 == 0, np.nan, x[0])])  # and a row with missing values
    expected = xgb_margins(loaded.ensemble.booster, x)
    compiled = np.vstack([trees.margins(row) for row in x])
    np.testing.assert_allclose(compiled, expected, atol=2e-6)
    one = loaded.ensemble.probabilities(x[:1])[0]  # the single-row path ai-engine takes
    batch = loaded.ensemble.probabilities(x[:2])[0][:1]
    np.testing.assert_allclose(one, batch, atol=1e-6)


def test_training_on_the_pypi_sample_is_reproducible(tmp_path):
    """The BTC/USD hourly sample `make run` replays (fetched once by `qt data sample`; tests never download it)."""
    from quantum_trader.data.cache import default_data_dir

    cached = sorted(default_data_dir().glob("BTCUSD-1h-*_*.csv"))
    if not cached:
        pytest.skip(f"the PyPI sample is not cached in {default_data_dir()} (run `qt data sample` once)")
    first = train(cached[-1:], tmp_path / "a" / "tiny", small())
    second = train(cached[-1:], tmp_path / "b" / "tiny", small())
    assert first.digest == second.digest
    assert first.manifest["training"]["data"][0]["symbol"] == "BTCUSD"
    assert set(first.summary["pnl"]) == {"ensemble", "buy_and_hold", "baseline"}


def test_qt_train_prints_the_same_digest_and_writes_the_report(trained, shared_klines, tmp_path):
    from click.testing import CliRunner

    from quantum_trader.cli import main

    args = ["train", "--quiet", "--max-bars", "1500", "--folds", "2", "--embargo", "12", "--xgb-rounds", "20",
            "--epochs", "3", "--out", str(tmp_path / "tiny")]
    for f in FILES:
        args += ["--data", str(shared_klines / f)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert f"digest  {trained.digest}" in result.output
    assert (tmp_path / "tiny" / "report" / "index.html").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "/nonexistent/*.csv", "--out", "m"], "no kline file matches"),
        (["--data", "{btc}", "--out", "bad name"], "the folder name is the model name"),
        (["--data", "{btc}", "--max-bars", "300", "--out", "m"], "need at least 500"),
        (["--data", "{btc}", "--data", "{btc_1m}", "--max-bars", "600", "--out", "m"], "one bar interval, got 1h, 1m"),
        (["--data", "{btc}", "--horizon", "0", "--out", "m"], "--horizon"),
    ],
)
def test_qt_train_user_mistakes_are_one_line_and_exit_2(shared_klines, tmp_path, args, message):
    from click.testing import CliRunner

    from quantum_trader.cli import main

    one_minute = "BTCUSDT-1m-2025-05-05_2025-06-23.csv"
    files = {"btc": str(shared_klines / FILES[0]), "btc_1m": str(shared_klines / one_minute)}
    argv = ["train", "--quiet", *[a.format(**files) if a.startswith("{") else a for a in args]]
    argv = [str(tmp_path / a) if prev == "--out" else a for prev, a in zip(["", *argv[:-1]], argv, strict=True)]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert message in result.output and "Traceback" not in result.output
    if "--horizon" not in args:
        assert len(lines) == 1 and lines[0].startswith("qt: error: ")
