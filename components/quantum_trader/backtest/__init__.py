"""``qt backtest``: a lockstep replay through the component processes and the exchange simulator, and its report."""
