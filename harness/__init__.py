"""normbench harness: fair, tuned, multi-seed benchmarks of normalization layers.

The public plugin API is re-exported here: ``hookimpl``, :class:`Norm`, :class:`Param`,
:class:`Task` and :class:`TaskConfig`. Importing this package imports no torch.
"""

from .hookspecs import hookimpl
from .norm import Norm, Param
from .task import Splits, Task, TaskConfig

__version__ = "0.1.0"
__all__ = ["Norm", "Param", "Splits", "Task", "TaskConfig", "__version__", "hookimpl"]
