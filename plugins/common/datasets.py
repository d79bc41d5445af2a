"""Data every built-in task shares: the stratified split, and sklearn's bundled 8×8 digits (no
download) with its stratified test split. numpy and scikit-learn only (no torch)."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

#: Classes of sklearn's digits.
DIGIT_CLASSES = 10


def stratified_split(labels: np.ndarray, count: int, seed: int,
                     among: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(kept, taken): the indices ``among`` (default: all of ``labels``), ``count`` of them taken,
    by scikit-learn's ``train_test_split(..., stratify=labels, random_state=seed)``, so every
    class is taken within one of its proportional share; both come in its shuffled order.

    Where scikit-learn cannot stratify (a class with a single sample, or fewer places on either
    side than classes: tiny data sets) the split is a plain random one of the same size.
    ``count`` = 0 takes nothing and keeps every index in order.
    """
    labels = np.asarray(labels)
    among = np.arange(len(labels)) if among is None else np.asarray(among)
    if count == 0:
        return among, among[:0]
    classes, counts = np.unique(labels[among], return_counts=True)
    stratifiable = counts.min() >= 2 and min(count, len(among) - count) >= len(classes)
    kept, taken = train_test_split(among, test_size=count, stratify=labels[among] if stratifiable else None,
                                   random_state=seed)
    return kept, taken


def digits_split(test_fraction: float, seed: int) -> tuple[tuple[np.ndarray, np.ndarray],
                                                           tuple[np.ndarray, np.ndarray]]:
    """sklearn's digits as ``(images, labels)`` of train and test: images float64 N×8×8 with
    values 0..16 (as sklearn gives them), labels int64; the test split is ``test_fraction`` of the
    1797 images, :func:`stratified_split` with ``seed``."""
    digits = load_digits()
    images, labels = digits.images, digits.target.astype(np.int64)
    train, test = stratified_split(labels, round(test_fraction * len(labels)), seed)
    return (images[train], labels[train]), (images[test], labels[test])


__all__ = ["DIGIT_CLASSES", "digits_split", "stratified_split"]
