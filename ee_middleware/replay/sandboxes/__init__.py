"""Sandboxes: tool environments that replay can rebuild, branch and rewind (see protocol.py)."""
