"""Contracts: every stream message, the envelope, the stream/component registry, keys and the policy spec."""
