"""The tick sequence a policy's ``marketData`` describes, for market-data and backtests alike.

One function decides what "replay" and "synthetic" mean, so ``qt run``, ``qt backtest`` and the
market-data component cannot disagree about which bars are played or skipped.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from quantum_trader.contracts.messages import Tick
from quantum_trader.contracts.policy import MarketDataSource, MarketDataSpec
from quantum_trader.data.errors import DataError
from quantum_trader.data.replay import DEFAULT_SPREAD_BPS, expand_files, replay_ticks
from quantum_trader.data.synthetic import synthetic_ticks


def market_ticks(
    spec: MarketDataSpec, symbols: Sequence[str], *, spread_bps: float = DEFAULT_SPREAD_BPS
) -> Iterator[Tick]:
    """Replayed files (every listed file) or one synthetic series per symbol, after ``skipBars``, up to ``maxBars``.

    Live market data is a websocket, not a recorded sequence, and is refused here.
    """
    if spec.source is MarketDataSource.REPLAY:
        if not spec.files:
            raise DataError("market data source is replay but no files are given (marketData.files)")
        return replay_ticks(
            expand_files(spec.files), spread_bps=spread_bps, skip_bars=spec.skip_bars, max_bars=spec.max_bars
        )
    if spec.source is MarketDataSource.SYNTHETIC:
        if not symbols:
            raise DataError("synthetic market data needs at least one symbol")
        bars = spec.synthetic_bars
        if spec.max_bars:
            bars = min(bars, spec.skip_bars + spec.max_bars)
        return synthetic_ticks(
            symbols,
            seed=spec.seed,
            bars=bars,
            start_price=spec.start_price,
            spread_bps=spread_bps,
            skip_bars=spec.skip_bars,
        )
    raise DataError(f"market data source {spec.source.value!r} is live, not a sequence; use replay or synthetic")
