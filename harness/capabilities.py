"""The capabilities a task may provide and a norm may need (``Task.provides``, ``Norm.needs``).

``harness check`` refuses a norm in a task that lacks what it needs, before anything trains.
Plain strings, so that registrations stay free of heavy imports; a plugin may define its own.
"""

LABELS = "labels"  # a class label per training sample (class-balanced batches, balanced evaluation)
UNLABELED = "unlabeled"  # a stream of unlabeled inputs beside the labeled training set
#: The training forward is ``net(inputs)`` on one tensor of equally shaped samples, and a
#: training sample's input is that tensor's row: a protocol may add samples of its own to a
#: batch, draw input batches or take the dataset's input moments.
INPUT_BATCHES = "input_batches"
#: The network's outputs are class scores along dim 1 (N×K, or N×K×H×W per pixel): an
#: evaluation may average their softmax over several passes (Monte-Carlo evaluations).
CLASS_SCORES = "class_scores"
