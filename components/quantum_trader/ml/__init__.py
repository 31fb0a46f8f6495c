"""Features, strategies and models that turn market ticks into trade intents."""
