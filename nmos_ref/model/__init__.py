"""The registry model: resources, TAI timestamps, the store and its change feed. No HTTP here."""
