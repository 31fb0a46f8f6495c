"""The research loop around the pure ``ml`` package: datasets from kline files, training, artifacts on disk, reports.

Everything here reads or writes files; the decisions it uses (features, labels, splits, models, the
ensemble rule) live in ``quantum_trader.ml``, which does no I/O, so the ai-engine runs exactly the code
training evaluated.
"""
