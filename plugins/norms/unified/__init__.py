"""Unified Batch Normalization and its parts (registration written by the unified-norms work)."""
