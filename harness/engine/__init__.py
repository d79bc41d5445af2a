"""One trial on mmengine: the recipe (:mod:`.recipe`: data, model, Runner, evaluations), the
adapters (:mod:`.model`: the training step and the metric; :mod:`.hooks`: progress and the
protocol's epochs), the optimizer and schedule configs (:mod:`.optim`) and the measurement of
costs (:mod:`.costs`). Imported inside trial processes only: it imports torch and mmengine."""

from .costs import environment, peak_memory_mb
from .model import TaskMetric, TaskModel, build_model, build_net
from .optim import optim_wrapper_cfg, scheduler_cfg
from .recipe import TrialRequest, TrialResult, configure_determinism, distributed_rank, run_trial

__all__ = ["TaskMetric", "TaskModel", "TrialRequest", "TrialResult", "build_model", "build_net",
           "configure_determinism", "distributed_rank", "environment", "optim_wrapper_cfg", "peak_memory_mb",
           "run_trial", "scheduler_cfg"]
