"""Offline evaluation: metrics (pure functions), train/test splits without leakage, and the
evaluator that fits models and ranks through `recsvc.ranking` exactly as batch export and the
server do. Imports `recsvc` and `training.models`; never `serving`.
"""
