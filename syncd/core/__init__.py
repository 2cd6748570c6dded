"""Pure cores: no I/O, no clocks of their own (see docs/architecture.md)."""
