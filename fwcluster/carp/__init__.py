"""CARP v2 failover: wire format, state machine (pure) and the carpd shell."""
