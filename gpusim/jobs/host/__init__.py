"""Measurements of the real kernel this machine runs (fork timing so far)."""
