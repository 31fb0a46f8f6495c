"""Pure exit logic shared by exit-brain, harvest and heat-gate (and the operator's ExitRollout status).

Nothing in this package does I/O or imports Redis: the services in ``quantum_trader.services``
read state, call these functions and turn their answers into a ``Step``.
"""
