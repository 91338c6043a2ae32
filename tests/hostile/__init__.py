"""Hostile and broken inputs: corpus generator, CLI tests under limits, property tests."""
