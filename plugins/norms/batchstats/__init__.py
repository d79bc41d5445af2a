"""Batch-statistics methods (registration written by the unified-norms work)."""
