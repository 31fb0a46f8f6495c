"""Redis streams client: groups, the exactly-once stage step, reclaim, DLQ, trimming, control and heartbeats."""
