"""normbench harness: fair, tuned, multi-seed benchmarks of normalization layers.

The public plugin API is re-exported here: ``hookimpl``, :class:`Norm` with its
:class:`NormConfig` (and :class:`Search` ranges), :class:`Task` with its :class:`TaskConfig`,
and :class:`Splits`. Importing this package imports no torch.
"""

from .hookspecs import hookimpl
from .norm import Norm, NormConfig, Search
from .task import Splits, Task, TaskConfig

__version__ = "0.1.0"
__all__ = ["Norm", "NormConfig", "Search", "Splits", "Task", "TaskConfig", "__version__", "hookimpl"]
