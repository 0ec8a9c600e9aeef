"""Drafting jobs: creation, queueing and reconciliation (the node's side)."""
