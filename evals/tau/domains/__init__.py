"""Domains shipped with the tau-style harness (package data: a JSON database, a policy, tasks)."""
