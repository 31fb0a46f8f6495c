"""Pure execution decisions: sizing intents into plans, the order gateway's rules, reconciliation."""
