"""Seeds derived from several numbers (a trial's seed and an epoch, a search's seed and a trial
number): distinct for every combination, where a sum would give seed 0's second epoch the
randomness of seed 1's first, and within 32 bits, which every generator accepts."""

from __future__ import annotations

import numpy as np


def derived_seed(*parts: int) -> int:
    return int(np.random.SeedSequence(parts).generate_state(1)[0])
