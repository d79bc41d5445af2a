"""Classification metrics from additive sufficient statistics: top-1 (and top-k) accuracy, mean
negative log-likelihood and, optionally, the expected calibration error.

A task's ``batch_stats`` returns :meth:`ClassificationSums.batch` and its ``reduce`` returns
:meth:`ClassificationSums.reduce`. The statistics are sums over the batch, so the metrics do not
depend on how a split was batched, and they stay on the device: 0-d float32 tensors, views of one
vector, with no ``.item()`` (no wait for the GPU per batch), no float64 (slow on GPUs) and no
bincount or scatter (no deterministic CUDA kernel). The harness moves all batches' statistics to
the host at once and :meth:`ClassificationSums.reduce` adds them up in Python floats.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F


class ClassificationSums:
    """The statistics of ``outputs`` (N×classes logits or log-probabilities: a log-softmax of
    either is the same) against ``targets`` (N class indices), in this order:

    - ``count``: samples; ``correct``: top-1 hits (arg-max of the outputs);
    - ``top{k}``: top-k hits, when ``topk`` > 1 (k capped at the number of classes);
    - ``nll_sum``: summed negative log-likelihood of the targets;
    - per confidence bin ``b`` < ``ece_bins``: ``bin_count{b}``, ``bin_conf{b}``, ``bin_correct{b}``.
      A sample with top confidence p falls in bin ⌈bins·p⌉ − 1: equal-width bins over (0, 1].
    """

    def __init__(self, topk: int = 1, ece_bins: int = 0) -> None:
        if topk < 1 or ece_bins < 0:
            raise ValueError("topk must be at least 1 and ece_bins at least 0")
        self.topk = topk
        self.ece_bins = ece_bins

    @property
    def names(self) -> list[str]:
        """The statistics' names, in the order of the vector they are views of."""
        topk = [f"top{self.topk}"] if self.topk > 1 else []
        bins = [f"{kind}{b}" for b in range(self.ece_bins) for kind in ("bin_count", "bin_conf", "bin_correct")]
        return ["count", "correct", *topk, "nll_sum", *bins]

    def batch(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """One evaluation batch's statistics, on the outputs' device."""
        logits = outputs.detach().float()
        logp = F.log_softmax(logits, dim=1)
        correct = (logits.argmax(dim=1) == targets).float()
        head = [logp.new_full((), len(targets)), correct.sum()]
        if self.topk > 1:
            top = logp.topk(min(self.topk, logp.shape[1]), dim=1).indices
            head.append((top == targets[:, None]).any(dim=1).float().sum())
        head.append(F.nll_loss(logp, targets, reduction="sum"))
        parts = [torch.stack(head)]
        if self.ece_bins:
            parts.append(self._bin_sums(logp.amax(dim=1).exp(), correct))
        return dict(zip(self.names, torch.cat(parts).unbind(), strict=True))

    def _bin_sums(self, confidence: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
        """Per bin: count, summed confidence, correct predictions; flattened bin by bin. Sums over
        the bins' one-hot matrix, built by comparison (no bincount or scatter)."""
        bins = (confidence * self.ece_bins).ceil().long().clamp(1, self.ece_bins) - 1
        one_hot = (bins[:, None] == torch.arange(self.ece_bins, device=bins.device)).float()  # N × bins
        per_sample = torch.stack([torch.ones_like(confidence), confidence, correct], dim=1)  # N × 3
        # a product and a sum rather than a matmul, so that neither TF32 nor an autocast region can
        # round the confidences
        return (one_hot[:, :, None] * per_sample[:, None, :]).sum(dim=0).flatten()

    def reduce(self, stats: Sequence[Mapping[str, float | torch.Tensor]]) -> dict[str, float]:
        """``top1``, ``top{k}`` (when ``topk`` > 1), ``nll`` (means) and, with bins,
        ``ece`` = Σ_bins |correct − confidence| / N (Guo et al. 2017), from all batches' statistics."""
        total = {name: sum(float(s[name]) for s in stats) for name in self.names}
        n = total["count"]
        if not n:
            raise ValueError("no evaluation samples to reduce")
        metrics = {"top1": total["correct"] / n}
        if self.topk > 1:
            metrics[f"top{self.topk}"] = total[f"top{self.topk}"] / n
        metrics["nll"] = total["nll_sum"] / n
        if self.ece_bins:
            gap = sum(abs(total[f"bin_correct{b}"] - total[f"bin_conf{b}"]) for b in range(self.ece_bins))
            metrics["ece"] = gap / n
        return metrics


__all__ = ["ClassificationSums"]


def mean_probability(outputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Combine stochastic predictions of a classifier (class scores on dim 1): the log of the mean
    softmax, which a cross-entropy or an argmax reads like logits."""
    probs = torch.stack([o.float().softmax(dim=1) for o in outputs]).mean(dim=0)
    return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()
