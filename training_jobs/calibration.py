"""One threshold on the anomaly score, calibrated for a target false-alarm rate on held-out normal data.

An episode opens when k of the last n windows score above the threshold, so a false alarm happens
exactly when the k-th largest score of n consecutive windows does. The threshold is therefore set on
that rolling statistic, not on single windows: isolated outliers (a bad reading stays in a window for
a window's length, fewer than k windows) cost nothing, and a sustained excursion is what is measured.
The threshold is the level the statistic's maxima over blocks of n windows exceed once per
1 / target_false_alarms_per_day days: read off the block maxima when the data shows that level exceeded
at least EMPIRICAL_EXCEEDANCES times (fewer values above a quantile are noise), else extrapolated from
them, and then never less than the highest value seen. Blocks wholly outside the operating regime score
0 and cannot alarm: the law is fitted to the scored blocks, at the rate per scored block that gives the
target per day. The extrapolation fits a Gumbel law to the logarithm of the maxima (method of moments),
i.e. a heavy, Fréchet-like tail: normal operation over a day holds rarer conditions than a short validation
shows, and a light-tailed fit underestimates them. The extrapolation reaches at most MAX_EXTRAPOLATION
times the span of the data (a few minutes of held-out data say nothing about once-a-month events). Few
blocks (short data): the highest value seen x FALLBACK_MARGIN.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from shared.errors import TrainingError
from shared.ml.episodes import EpisodeRule

EULER_GAMMA = 0.5772156649015329
MIN_BLOCKS = 8
EMPIRICAL_EXCEEDANCES = 10
FALLBACK_MARGIN = 1.5
MAX_EXTRAPOLATION = 100.0
SECONDS_PER_DAY = 86_400.0


@dataclass(frozen=True)
class Calibration:
    threshold: float
    method: str  # "empirical", "gumbel" or "max"
    windows: int  # normal windows the statistic was computed on
    blocks: int
    highest: float  # highest rolling statistic seen
    location: float | None = None  # Gumbel fit of log(block maxima)
    scale: float | None = None
    target_false_alarms_per_day: float = 0.0
    margin: float = 1.0  # the threshold is the calibrated level times this

    def to_dict(self) -> dict[str, float | int | str | None]:
        return asdict(self)


def rolling_kth(scores: np.ndarray, k: int, n: int) -> np.ndarray:
    """Per window: the k-th largest score among it and the n - 1 windows before it (0 while fewer than k
    windows were seen): an episode opens at a window iff this exceeds the threshold."""
    s = np.asarray(scores, dtype=np.float64)
    if not len(s):
        return s
    padded = np.concatenate([np.zeros(n - 1), np.nan_to_num(s, nan=0.0)])
    view = sliding_window_view(padded, n)
    return np.partition(view, n - k, axis=1)[:, n - k]


def calibrate(segments: list[np.ndarray], rule: EpisodeRule, stride_s: float, target_per_day: float,
              margin: float = 1.0) -> Calibration:
    """`segments`: scores of consecutive normal windows (time order), one array per gap-free run; windows
    outside the operating regime score 0 (the rule cannot open an episode on them)."""
    rolled = [rolling_kth(s, rule.k, rule.n) for s in segments if len(s)]
    if not rolled:
        raise TrainingError("no normal held-out windows to calibrate the threshold on")
    values = np.concatenate(rolled)
    highest = float(values.max())
    maxima = np.asarray([r[i:i + rule.n].max() for r in rolled for i in range(0, len(r) - rule.n + 1, rule.n)])

    def highest_seen() -> Calibration:  # too few blocks (or no spread) to read or fit a rate
        return Calibration(max(highest * FALLBACK_MARGIN, 1e-9) * margin, "max", len(values), len(maxima), highest,
                           target_false_alarms_per_day=target_per_day, margin=margin)

    if len(maxima) < MIN_BLOCKS or not np.std(maxima) > 0:
        return highest_seen()
    blocks_per_day = SECONDS_PER_DAY / (rule.n * stride_s)
    return_period = max(blocks_per_day / target_per_day, 1.0 + 1e-9)
    scored = maxima[maxima > 0]
    logs = np.log(scored)
    scale = float(np.std(logs, ddof=1)) * math.sqrt(6.0) / math.pi if len(scored) > 1 else 0.0
    location = float(np.mean(logs)) - EULER_GAMMA * scale if len(scored) else 0.0
    if len(maxima) >= EMPIRICAL_EXCEEDANCES * return_period:  # the data shows the level exceeded
        level = float(np.quantile(maxima, 1.0 - 1.0 / return_period))
        return Calibration(max(level, 1e-9) * margin, "empirical", len(values), len(maxima), highest, location,
                           scale, target_per_day, margin)
    if len(scored) < MIN_BLOCKS or not scale > 0:
        return highest_seen()
    reach = max(min(return_period, MAX_EXTRAPOLATION * len(maxima)) * len(scored) / len(maxima), 1.0 + 1e-9)
    level = math.exp(location - scale * math.log(-math.log1p(-1.0 / reach)))
    threshold = max(level, highest, 1e-9) * margin
    return Calibration(threshold, "gumbel", len(values), len(maxima), highest, location, scale, target_per_day,
                       margin)
