"""Buy-again lists: per-user repurchase candidates and the due score, shared by trainer and server.

The trainer (`training.buyagain.fit_buyagain`) estimates, for each (user, item) a customer
re-buys, the typical interval between purchases, its spread and a confidence. The bundle keeps
those per-pair facts, not just a score, so the due score is recomputed at request time from the
clock: a list trained on Monday is still right on Friday.

Due score (pure function `due_scores`): the next purchase time T is modelled as
Normal(next_due, sd_days), next_due = last purchase + interval. The score is

    confidence * P(|T - now| <= horizon_days)
      = confidence * [Phi((H - d) / sd) - Phi((-H - d) / sd)],   d = (next_due - now) in days

with H = `horizon_days` (7 by default). It peaks when now = next_due, is close to `confidence`
for items whose cycle falls inside the week, and fades for items bought moments ago on a long
cycle or long overdue (the customer has probably switched). `confidence` grows with the number
of observed intervals (n / (n + 1)); items bought once carry the item's population repurchase
rate / 3 instead (see training.buyagain).

Bundle layout (`buyagain/`): a CSR over users, each row sorted best first at training time:
`indptr` (int64, users + 1), `items` (int32), `due_score` (float32, at training time), and
parallel arrays `next_due` (int64 epoch s), `interval_days` (float32), `count` (int32, purchase
occasions: buys under 12 h apart count once), `last` (int64 epoch s), `sd_days` (float32), `confidence` (float32); plus
`meta.json` (`trained_at`, `horizon_days`).

Must not import `training` or `serving`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from scipy.special import ndtr

if TYPE_CHECKING:
    from recsvc.bundle import Bundle, BundleWriter

SECONDS_PER_DAY = 86_400
HORIZON_DAYS = 7.0  # the due score is the chance of a re-buy within this many days of now
MIN_SD_DAYS = 1.0  # purchase dates are known to the day at best
# Items less likely than this to be re-bought now are not offered (server and export alike):
# a reminder for an item due in two months, or long overdue, is noise.
MIN_DUE_SCORE = 0.01
PREFIX = "buyagain"
ARRAYS = ("indptr", "items", "due_score", "next_due", "interval_days", "count", "last",
          "sd_days", "confidence")


class DueItem(NamedTuple):
    """One buy-again suggestion: unpacks as (item, score, reason, next_due)."""

    item: int  # item index
    score: float
    reason: str
    next_due: int  # epoch seconds


def due_scores(
    now: int | float,
    next_due: np.ndarray,
    sd_days: np.ndarray,
    confidence: np.ndarray,
    horizon_days: float = HORIZON_DAYS,
) -> np.ndarray:
    """Due score per pair at `now` (epoch s): confidence x P(next purchase within horizon of now)."""
    offset = (np.asarray(next_due, dtype=np.float64) - float(now)) / SECONDS_PER_DAY
    sd = np.maximum(np.asarray(sd_days, dtype=np.float64), MIN_SD_DAYS)
    inside = ndtr((horizon_days - offset) / sd) - ndtr((-horizon_days - offset) / sd)
    return (np.asarray(confidence, dtype=np.float64) * inside).astype(np.float32)


def _days(value: float) -> str:
    days = int(round(value))
    return f"{days} day" if days == 1 else f"{days} days"


def due_text(next_due: int, now: int | float) -> str:
    """'due in 2 days', 'due today' or 'overdue by 3 days' (rounded to whole days)."""
    days = int(round((next_due - float(now)) / SECONDS_PER_DAY))
    if days > 0:
        return f"due in {_days(days)}"
    if days == 0:
        return "due today"
    return f"overdue by {_days(-days)}"


def interval_text(interval_days: float) -> str:
    if interval_days >= 2:
        return f"about every {_days(interval_days)}"
    return f"about every {interval_days:.1f} days"


def reason_text(count: int, interval_days: float, next_due: int, now: int | float) -> str:
    """'bought 5 times, about every 14 days; due in 2 days' (once-bought items say so)."""
    if count <= 1:
        head = f"bought once; customers re-buy it {interval_text(interval_days)}"
    else:
        head = f"bought {count} times, {interval_text(interval_days)}"
    return f"{head}; {due_text(next_due, now)}"


@dataclass(frozen=True, eq=False)
class BuyAgainLists:
    """Per-user repurchase candidates (CSR over users) with what the due score needs."""

    indptr: np.ndarray  # int64, n_users + 1
    items: np.ndarray  # int32
    due_score: np.ndarray  # float32, at trained_at
    next_due: np.ndarray  # int64 epoch s
    interval_days: np.ndarray  # float32
    count: np.ndarray  # int32 purchase occasions (buys under 12 h apart are one; training.buyagain)
    last: np.ndarray  # int64 epoch s
    sd_days: np.ndarray  # float32
    confidence: np.ndarray  # float32
    trained_at: int = 0  # epoch s
    horizon_days: float = HORIZON_DAYS

    @classmethod
    def empty(cls, n_users: int, trained_at: int = 0) -> BuyAgainLists:
        return cls(
            indptr=np.zeros(n_users + 1, dtype=np.int64),
            items=np.zeros(0, dtype=np.int32),
            due_score=np.zeros(0, dtype=np.float32),
            next_due=np.zeros(0, dtype=np.int64),
            interval_days=np.zeros(0, dtype=np.float32),
            count=np.zeros(0, dtype=np.int32),
            last=np.zeros(0, dtype=np.int64),
            sd_days=np.zeros(0, dtype=np.float32),
            confidence=np.zeros(0, dtype=np.float32),
            trained_at=trained_at,
        )

    @property
    def n_users(self) -> int:
        return int(len(self.indptr) - 1)

    def __len__(self) -> int:
        return int(len(self.items))

    def row_users(self) -> np.ndarray:
        """The user index of every stored entry (int32)."""
        return np.repeat(np.arange(self.n_users, dtype=np.int32), np.diff(self.indptr))

    def scores_at(self, now: int | float) -> np.ndarray:
        """Due scores of every stored entry at `now` (epoch s)."""
        return due_scores(now, self.next_due, self.sd_days, self.confidence, self.horizon_days)

    def for_user(
        self, user_index: int, now: int | float, k: int | None = None, min_score: float = 0.0
    ) -> list[DueItem]:
        """A user's items ranked by due score at `now`, best first (empty for unknown users).

        min_score: leave out items scoring below it (0 keeps them all, however far off).
        """
        if user_index < 0 or user_index >= self.n_users:
            return []
        start, end = int(self.indptr[user_index]), int(self.indptr[user_index + 1])
        if start == end:
            return []
        next_due = np.asarray(self.next_due[start:end])
        scores = due_scores(
            now, next_due, self.sd_days[start:end], self.confidence[start:end], self.horizon_days
        )
        # Ties (far-off items all near 0) go to the one due soonest.
        order = np.lexsort((np.abs(next_due - float(now)), -scores))
        out: list[DueItem] = []
        for position in order.tolist():
            score = float(scores[position])
            if score < min_score:
                continue
            entry = start + position
            out.append(
                DueItem(
                    item=int(self.items[entry]),
                    score=score,
                    reason=reason_text(
                        int(self.count[entry]),
                        float(self.interval_days[entry]),
                        int(self.next_due[entry]),
                        now,
                    ),
                    next_due=int(self.next_due[entry]),
                )
            )
            if k is not None and len(out) >= k:
                break
        return out

    def rescored(self, now: int | float) -> BuyAgainLists:
        """The same lists with scores at `now` and each user's row re-sorted best first."""
        scores = self.scores_at(now)
        distance = np.abs(np.asarray(self.next_due, dtype=np.float64) - float(now))
        order = np.lexsort((distance, -scores, self.row_users()))
        return BuyAgainLists(
            indptr=np.asarray(self.indptr),
            items=np.asarray(self.items)[order],
            due_score=scores[order],
            next_due=np.asarray(self.next_due)[order],
            interval_days=np.asarray(self.interval_days)[order],
            count=np.asarray(self.count)[order],
            last=np.asarray(self.last)[order],
            sd_days=np.asarray(self.sd_days)[order],
            confidence=np.asarray(self.confidence)[order],
            trained_at=int(now),
            horizon_days=self.horizon_days,
        )

    def write(self, writer: BundleWriter) -> None:
        """Save under `buyagain/` in the bundle being written."""
        for name in ARRAYS:
            writer.array(f"{PREFIX}/{name}", np.asarray(getattr(self, name)))
        writer.json(
            f"{PREFIX}/meta.json",
            {"trained_at": int(self.trained_at), "horizon_days": float(self.horizon_days),
             "users": self.n_users, "entries": len(self)},
        )

    @classmethod
    def read(cls, bundle: Bundle, mmap: bool = True) -> BuyAgainLists:
        """Load from a bundle (arrays memory-mapped). Raises BundleFormatError when absent."""
        arrays: dict[str, Any] = {name: bundle.array(f"{PREFIX}/{name}", mmap=mmap)
                                  for name in ARRAYS}
        meta = bundle.json(f"{PREFIX}/meta.json") if bundle.has(f"{PREFIX}/meta.json") else {}
        return cls(
            **arrays,
            trained_at=int(meta.get("trained_at", 0)),
            horizon_days=float(meta.get("horizon_days", HORIZON_DAYS)),
        )
