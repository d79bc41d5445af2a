"""The leaderboard: the board read from storage (:mod:`.board`), its statistics (:mod:`.stats`)
and its files (:mod:`.render`, the page :mod:`.page`)."""

from .board import Board, Row, Source, build, read
from .page import page
from .render import FORMATS, as_json, document, markdown, tidy_csv, write
from .stats import Across, Comparison, across, compare, holm, rank

__all__ = ["FORMATS", "Across", "Board", "Comparison", "Row", "Source", "across", "as_json", "build", "compare",
           "document", "holm", "markdown", "page", "rank", "read", "tidy_csv", "write"]
