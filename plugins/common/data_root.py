"""The advice every task's missing-data message ends with: where the data root is set, and that
``--smoke`` runs without it. Standard library only (the light, suite side uses it)."""

from __future__ import annotations


def data_root_help(generated: str = "generated data") -> str:
    """How to point the harness at the data; ``generated`` names what ``--smoke`` writes instead."""
    return ("Set the data root with `data_root` in [suite] (relative to the suite file) or the HARNESS_DATA "
            "environment variable (default: ./data); `harness run SUITE --smoke` checks the suite end to end on "
            f"{generated} without it.")


__all__ = ["data_root_help"]
