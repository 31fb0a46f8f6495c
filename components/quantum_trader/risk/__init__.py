"""Pure risk logic: the governor's limit rules, position math, portfolio heat.

Nothing here does I/O. The services (``services/governor.py``, ``services/position_state.py``)
read Redis, call these functions and write the result in one exactly-once step, so every rule
can be tested exhaustively without a server.
"""
