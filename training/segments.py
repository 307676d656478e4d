"""Customer segments: RFM scores mapped to named segments, and taste clusters from ALS factors.

RFM per user, from purchase rows (type "purchase"; every row in an interaction-only log):
- recency_days: days from the last purchase to `now` (the last event of any type for users who
  never bought);
- frequency: distinct orders (rows without an order id: distinct purchase days);
- monetary: sum of price x quantity over purchases with a known price; a log with no prices at
  all uses the number of units bought instead.

Scores 1-5 are quantiles among buyers: a value's average rank (ties share it) as a fraction p of
the buyers gives ceil(5 p). R ranks recency reversed (recent is 5). Users with no purchase get
r = f = m = 0 and segment `prospect`.

Segment map, the usual RFM grid on R and FM = round((F + M) / 2) (halves rounded up):

    R \\ FM    1                2                3                4                5
    5      new              potential_loyalist potential_loyalist champions      champions
    4      promising        potential_loyalist potential_loyalist loyal          loyal
    3      about_to_sleep   about_to_sleep   need_attention   loyal            loyal
    2      hibernating      hibernating      at_risk          at_risk          cant_lose
    1      lost             hibernating      at_risk          at_risk          cant_lose

A log without timestamps has no recency: every buyer gets R=3 (the middle score) and the
segment is named from FM alone with UNTIMED_MAP (occasional, occasional, regular, loyal,
loyal), since names like about_to_sleep or at_risk would claim a recency nobody measured.

Taste clusters: k-means (scipy kmeans2, k-means++ start, `config.seed`, best of a few starts,
fitted on at most KMEANS_SAMPLE users, then every user assigned to the nearest centroid) on
L2-normalised ALS user factors, so users group by what they like rather than how much they
buy; cluster ids are renumbered by size (0 is the largest). Users without a (non-zero) factor
vector get -1.

Bundle layout: `segments/users.parquet`, one row per user index: user_index, segment, cluster,
recency_days, frequency, monetary, r, f, m.

Imports recsvc and training only.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from recsvc.bundle import Bundle, BundleWriter
from recsvc.config import SegmentsConfig
from recsvc.errors import BundleFormatError
from recsvc.events import EventLog
from training.buyagain import purchase_mask

logger = logging.getLogger(__name__)

SECONDS_PER_DAY = 86_400.0
TABLE = "segments/users"
PROSPECT = "prospect"
KMEANS_STARTS = 3
KMEANS_ITERATIONS = 25
KMEANS_SAMPLE = 100_000  # users the centroids are fitted on

# SEGMENT_MAP[r - 1][fm - 1]: the grid in the module docstring.
SEGMENT_MAP: tuple[tuple[str, ...], ...] = (
    ("lost", "hibernating", "at_risk", "at_risk", "cant_lose"),
    ("hibernating", "hibernating", "at_risk", "at_risk", "cant_lose"),
    ("about_to_sleep", "about_to_sleep", "need_attention", "loyal", "loyal"),
    ("promising", "potential_loyalist", "potential_loyalist", "loyal", "loyal"),
    ("new", "potential_loyalist", "potential_loyalist", "champions", "champions"),
)
# UNTIMED_MAP[fm - 1]: segments of a log without timestamps (recency unknown).
UNTIMED_MAP: tuple[str, ...] = ("occasional", "occasional", "regular", "loyal", "loyal")
SEGMENT_NAMES = tuple(
    dict.fromkeys([*(name for row in reversed(SEGMENT_MAP) for name in row), *UNTIMED_MAP])
) + (PROSPECT,)


@dataclass(frozen=True, eq=False)
class Segments:
    """Per user index: RFM values, scores, segment name and taste cluster."""

    segment: np.ndarray  # object: segment name
    cluster: np.ndarray  # int32, -1: none
    recency_days: np.ndarray  # float32
    frequency: np.ndarray  # int32
    monetary: np.ndarray  # float32
    r: np.ndarray  # int8 1-5 (0: never bought)
    f: np.ndarray  # int8
    m: np.ndarray  # int8

    def __len__(self) -> int:
        return int(len(self.segment))

    @property
    def user_index(self) -> np.ndarray:
        return np.arange(len(self), dtype=np.int32)

    def counts(self, keep: np.ndarray | None = None) -> dict[str, int]:
        """Users per segment, largest first (then by name); `keep`: a mask of the users to
        count (e.g. not forgotten), all by default."""
        segment = self.segment if keep is None else self.segment[np.asarray(keep, dtype=bool)]
        values, sizes = np.unique(segment.astype(str), return_counts=True)
        order = np.lexsort((values, -sizes))
        return {str(values[i]): int(sizes[i]) for i in order}

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "user_index": self.user_index,
                "segment": pd.array(self.segment.astype(str), dtype="string"),
                "cluster": self.cluster.astype(np.int32),
                "recency_days": self.recency_days.astype(np.float32),
                "frequency": self.frequency.astype(np.int32),
                "monetary": self.monetary.astype(np.float32),
                "r": self.r.astype(np.int8),
                "f": self.f.astype(np.int8),
                "m": self.m.astype(np.int8),
            }
        )

    def write(self, writer: BundleWriter) -> None:
        """Save as `segments/users.parquet`."""
        writer.frame(TABLE, self.to_frame())

    @classmethod
    def read(cls, bundle: Bundle) -> Segments:
        """Load from a bundle; BundleFormatError when it has no segments."""
        if not (bundle.path / f"{TABLE}.parquet").exists():
            raise BundleFormatError(f"{bundle.path.name}: no customer segments in this bundle")
        frame = bundle.frame(TABLE).sort_values("user_index")
        return cls(
            segment=frame["segment"].astype(str).to_numpy(dtype=object),
            cluster=frame["cluster"].to_numpy(dtype=np.int32),
            recency_days=frame["recency_days"].to_numpy(dtype=np.float32),
            frequency=frame["frequency"].to_numpy(dtype=np.int32),
            monetary=frame["monetary"].to_numpy(dtype=np.float32),
            r=frame["r"].to_numpy(dtype=np.int8),
            f=frame["f"].to_numpy(dtype=np.int8),
            m=frame["m"].to_numpy(dtype=np.int8),
        )


def quantile_scores(values: np.ndarray, higher_is_better: bool = True) -> np.ndarray:
    """1-5 by average-rank quantile (ties share a score); int8.

    Values that are all equal carry no ranking: everyone gets the middle score 3 (the
    average-rank formula would give 5 to a lone buyer, 4 to two, 3 to five or more).
    """
    if len(values) == 0:
        return np.zeros(0, dtype=np.int8)
    if np.all(values == values[0]):
        return np.full(len(values), 3, dtype=np.int8)
    signed = values if higher_is_better else -values
    percent = pd.Series(signed, dtype=np.float64).rank(method="average", pct=True).to_numpy()
    return np.clip(np.ceil(5 * percent - 1e-9), 1, 5).astype(np.int8)


def segment_names(r: np.ndarray, f: np.ndarray, m: np.ndarray, timed: bool = True) -> np.ndarray:
    """Segment name per (r, f, m) scores 1-5; 0 in r means never bought (prospect). Without
    times (`timed` False) the name comes from FM alone (UNTIMED_MAP)."""
    fm = (f.astype(np.int64) + m.astype(np.int64) + 1) // 2
    out = np.full(len(r), PROSPECT, dtype=object)
    scored = r > 0
    column = np.clip(fm[scored], 1, 5) - 1
    if timed:
        out[scored] = np.asarray(SEGMENT_MAP, dtype=object)[r[scored].astype(np.int64) - 1, column]
    else:
        out[scored] = np.asarray(UNTIMED_MAP, dtype=object)[column]
    return out


def rfm(log: EventLog, now: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(recency_days float32, frequency int32, monetary float32) per user index."""
    n_users = len(log.users)
    known = log.user >= 0
    bought = purchase_mask(log)
    has_time = log.has_column.get("timestamp", False)

    def last_time(rows: np.ndarray) -> np.ndarray:
        out = np.full(n_users, np.iinfo(np.int64).min, dtype=np.int64)
        np.maximum.at(out, log.user[rows], log.timestamp[rows])
        return np.where(out == np.iinfo(np.int64).min, np.nan, out.astype(np.float64))

    last = last_time(bought)
    last_any = last_time(known)
    last = np.where(np.isnan(last), last_any, last)
    recency = np.maximum(now - last, 0) / SECONDS_PER_DAY if has_time else np.zeros(n_users)
    recency = np.nan_to_num(recency, nan=0.0)

    user = log.user[bought].astype(np.int64)
    order = log.order[bought].astype(np.int64)
    day = log.timestamp[bought] // int(SECONDS_PER_DAY)
    first_day = int(day.min()) if len(day) else 0
    # One occasion per order; rows without an order id: one per purchase day.
    occasion = np.where(order >= 0, order, len(log.orders) + (day - first_day))
    width = int(occasion.max()) + 1 if len(occasion) else 1
    keys = np.sort(user * width + occasion)  # np.sort + run starts: far faster than np.unique
    distinct = keys[np.concatenate(([True], keys[1:] != keys[:-1]))] // width if len(keys) else keys
    frequency = np.bincount(distinct, minlength=n_users).astype(np.int32)

    price = log.price[bought].astype(np.float64)
    priced = np.isfinite(price)
    quantity = log.quantity[bought].astype(np.float64)
    if priced.any():
        monetary = np.bincount(
            user[priced], weights=price[priced] * quantity[priced], minlength=n_users
        )
    else:
        monetary = np.bincount(user, weights=quantity, minlength=n_users)
    return recency.astype(np.float32), frequency, monetary.astype(np.float32)


def taste_clusters(user_factors: np.ndarray | None, n_users: int, k: int, seed: int) -> np.ndarray:
    """k-means cluster per user on L2-normalised factors; -1 without factors. int32."""
    out = np.full(n_users, -1, dtype=np.int32)
    if user_factors is None or k <= 0 or len(user_factors) == 0:
        return out
    factors = np.asarray(user_factors[:n_users], dtype=np.float32)  # float32: twice as fast
    norms = np.linalg.norm(factors, axis=1)
    valid = np.isfinite(norms) & (norms > 0)
    points = factors[valid] / norms[valid, None]
    k = min(k, len(points))
    if k == 0:
        return out
    if k == 1:
        out[np.flatnonzero(valid)] = 0
        return out
    from scipy.cluster.vq import kmeans2, vq

    # Centroids from a sample (plenty for k of a few dozen), then every user to its nearest.
    sample = points
    if len(points) > KMEANS_SAMPLE:
        picked = np.random.default_rng(seed).choice(len(points), KMEANS_SAMPLE, replace=False)
        sample = points[np.sort(picked)]
    best_centroids, best_inertia = None, np.inf
    for start in range(KMEANS_STARTS):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an empty cluster in one start is not an error
            centroids, labels = kmeans2(
                sample, k, iter=KMEANS_ITERATIONS, minit="++", seed=seed + start
            )
        inertia = float(((sample - centroids[labels]) ** 2).sum())
        if inertia < best_inertia:
            best_centroids, best_inertia = centroids, inertia
    assert best_centroids is not None
    labels, _ = vq(points, best_centroids, check_finite=False)
    sizes = np.bincount(labels, minlength=k)
    renumber = np.empty(k, dtype=np.int32)
    renumber[np.lexsort((np.arange(k), -sizes))] = np.arange(k, dtype=np.int32)
    out[np.flatnonzero(valid)] = renumber[labels]
    return out


def fit_segments(
    log: EventLog, now: int, user_factors: np.ndarray | None, config: SegmentsConfig
) -> Segments:
    """RFM scores, named segments and taste clusters for every user index of `log`.

    now: epoch seconds recency is measured from. user_factors: ALS user factors by user index
    (None: every cluster is -1).
    """
    n_users = len(log.users)
    timed = log.has_column.get("timestamp", False)
    if not timed:
        logger.warning("segments: the log has no timestamps, so recency is unknown: every buyer "
                       "gets the middle recency score R=3 and a segment named from FM alone")
    recency, frequency, monetary = rfm(log, now)
    buyers = frequency > 0
    r = np.zeros(n_users, dtype=np.int8)
    f = np.zeros(n_users, dtype=np.int8)
    m = np.zeros(n_users, dtype=np.int8)
    r[buyers] = quantile_scores(recency[buyers], higher_is_better=False)
    f[buyers] = quantile_scores(frequency[buyers])
    m[buyers] = quantile_scores(monetary[buyers])
    segments = Segments(
        segment=segment_names(r, f, m, timed),
        cluster=taste_clusters(user_factors, n_users, config.clusters, config.seed),
        recency_days=recency,
        frequency=frequency,
        monetary=monetary,
        r=r,
        f=f,
        m=m,
    )
    logger.info(
        "segments fitted",
        extra={"users": n_users, "buyers": int(buyers.sum()), "segments": segments.counts()},
    )
    return segments
