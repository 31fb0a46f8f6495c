"""How a component process runs: settings from the environment, JSON logs, health, metrics, the loop."""
