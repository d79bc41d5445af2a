"""The leaderboard: the board read from storage (:mod:`.board`), its statistics (:mod:`.stats`)
and its files (:mod:`.render`)."""

from .board import Board, Row, build
from .render import as_json, markdown, tidy_csv, write
from .stats import Comparison, compare, rank

__all__ = ["Board", "Comparison", "Row", "as_json", "build", "compare", "markdown", "rank", "tidy_csv", "write"]
