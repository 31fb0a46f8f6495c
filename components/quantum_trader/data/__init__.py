"""Market data: Binance kline files, their replay as ticks, a synthetic generator for tests, and data fetchers."""

from quantum_trader.data.errors import DataError, KlineFormatError

__all__ = ["DataError", "KlineFormatError"]
