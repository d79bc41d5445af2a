"""A suite file: its schema (:mod:`.schema`), the messages for what is wrong with it
(:mod:`.problems`), and its resolution against the plugins into a :class:`Suite` (:mod:`.resolve`)."""

from .resolve import NormSpec, Suite, Variant, load_suite
from .schema import SearchSection, SuiteFile

__all__ = ["NormSpec", "SearchSection", "Suite", "SuiteFile", "Variant", "load_suite"]
