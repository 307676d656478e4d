"""The Spark engine against the local one: the same bundle, rows, rules and statistics, and
recommendations of the same quality.

Every Spark test shares one local[2] SparkSession (session scope, small shuffles, no UI).
They skip, saying why, only when pyspark or a Java runtime cannot be had.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recsvc.bundle import Bundle
from recsvc.config import TrainConfig, load_train_config
from recsvc.events import LoadOptions, LoadReport, load_events

pytestmark = pytest.mark.slow

SPARK_CONF = {
    "spark.ui.enabled": "false",
    "spark.sql.shuffle.partitions": "2",
    "spark.default.parallelism": "2",
    # Tiny data: the C1 compiler alone starts the JVM about twice as fast, and without adaptive
    # execution every shuffle is not a job of its own (half the jobs).
    "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1",
    "spark.sql.adaptive.enabled": "false",
    # A dozen trainings share this one driver: Spark's default 1 GB heap ran out late in the file,
    # and 2 GB once too (CI of a483493, ~1,900 stages in). The engine now bounds the job history
    # the driver keeps (LAUNCH_CONF); 3 GB leaves room besides.
    "spark.driver.memory": "3g",
}
K = 10


def _java_problem() -> str | None:
    """Why no usable Java runtime is here (None: there is one). pyspark 4 needs Java 17+."""
    import re

    import pyspark

    home = os.environ.get("JAVA_HOME")
    java = shutil.which("java") or (str(Path(home) / "bin" / "java") if home else None)
    install = "apt-get install -y openjdk-17-jre-headless"
    if not java or not Path(java).exists():
        return f"no Java runtime (java not on PATH, JAVA_HOME unset): {install}"
    probe = subprocess.run([java, "-version"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"java -version failed: {probe.stderr.strip()[:200]}"
    found = re.search(r'version "(?:1\.)?(\d+)', probe.stderr)
    needed = 17 if int(pyspark.__version__.split(".")[0]) >= 4 else 8
    if found and int(found.group(1)) < needed:
        return f"Java {found.group(1)} is too old for pyspark {pyspark.__version__}: {install}"
    return None


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    pytest.importorskip("pyspark", reason="pyspark is not installed: pip install -e '.[spark]'")
    problem = _java_problem()
    if problem:
        pytest.skip(problem)
    from pyspark.errors import PySparkRuntimeError

    from training.engines.spark import spark_session

    try:
        session = spark_session("local[2]", SPARK_CONF)
    except PySparkRuntimeError as exc:  # the JVM would not start (e.g. a Java too old for pyspark)
        pytest.skip(f"Spark could not start a JVM here: {exc}")
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def _config(**overrides: Any) -> TrainConfig:
    return load_train_config(None, overrides, environ={})


# --- parity on a synthetic store ----------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A synthetic store with each user's last 20% of distinct items held out (random per user)."""
    from recsvc.synth import SynthConfig, generate, write
    from training.evaluation.splits import random_split

    root = tmp_path_factory.mktemp("spark-store")
    paths = write(generate(SynthConfig(users=1500, items=250, days=60, seed=11)), root)
    events = pd.read_csv(paths["events"], dtype=str, keep_default_na=False)
    user = pd.factorize(events["user_id"])[0]
    item = pd.factorize(events["item_id"])[0]
    held_out = random_split(user, item, ratio=0.2, seed=7)
    train_path = root / "train.csv"
    events[~held_out].to_csv(train_path, index=False)
    test = events.loc[held_out, ["user_id", "item_id"]].drop_duplicates()
    return {"train": train_path, "items": paths["items"], "test": test, "root": root}


PARITY = {
    "default_recommender": "als",
    "ease.enabled": False,
    "itemknn.enabled": False,
    "candidates": 50,
    "als.factors": 32,
}


@pytest.fixture(scope="module")
def bundles(spark: Any, store: dict[str, Any]) -> dict[str, Bundle]:
    """The same training data and config through both engines."""
    from training.engines.spark import train_spark
    from training.pipeline import train

    config = _config(**PARITY)
    local = train(store["train"], store["root"] / "local", config, items=store["items"])
    spark_result = train_spark(
        store["train"], store["root"] / "spark", config, items=store["items"], spark=spark
    )
    return {"local": Bundle(local.path), "spark": Bundle(spark_result.path)}


def ndcg_from_candidates(bundle: Bundle, test: pd.DataFrame, k: int = K) -> float:
    """nDCG@k of the bundle's stored candidates against held-out (user_id, item_id) pairs."""
    from training.evaluation.metrics import ndcg_at_k

    users = np.asarray(sorted(test["user_id"].unique()), dtype=object)
    item_ids = np.asarray(bundle.items.ids, dtype=object)
    rows = np.array([bundle.users.get(u) for u in users])
    ranked = np.full((len(users), k), -1, dtype=np.int64)
    known = rows >= 0
    candidates = np.asarray(bundle.array("candidates/items"))[rows[known], :k]
    ranked[known] = candidates
    user_row = {u: i for i, u in enumerate(users)}
    columns = np.array([bundle.items.get(i) for i in test["item_id"]])
    inside = columns >= 0  # an item seen only in the held-out part cannot be recommended by either
    relevant = sp.csr_matrix(
        (
            np.ones(int(inside.sum())),
            ([user_row[u] for u in test["user_id"][inside]], columns[inside]),
        ),
        shape=(len(users), len(item_ids)),
    )
    return ndcg_at_k(ranked, relevant, k)


def test_spark_recommendations_are_as_good_as_local(
    bundles: dict[str, Bundle], store: dict[str, Any]
) -> None:
    local = ndcg_from_candidates(bundles["local"], store["test"])
    spark = ndcg_from_candidates(bundles["spark"], store["test"])
    print(f"nDCG@{K} on held-out items: local ALS {local:.4f}, Spark ALS {spark:.4f}")
    assert local > 0.05  # the planted tastes are learnable at all
    assert spark >= 0.85 * local


def test_spark_bundle_loads_with_the_local_layout(bundles: dict[str, Bundle]) -> None:
    from recsvc.scorers import FactorScorer

    local, spark = bundles["local"], bundles["spark"]
    assert spark.manifest["engine"]["name"] == "spark"
    assert set(spark.manifest["artifacts"]) == set(local.manifest["artifacts"])
    assert spark.default_recommender == "als" and spark.recommenders == ["als", "popular"]
    assert set(spark.users.ids) == set(local.users.ids) and set(spark.items.ids) == set(
        local.items.ids
    )
    assert spark.manifest["rows"] == local.manifest["rows"]
    # item updates made while it trained apply to it in the store (recsvc.store.engine)
    read_at = datetime.fromisoformat(spark.manifest["catalog_read_at"])
    assert read_at <= datetime.fromisoformat(spark.manifest["created_at"])
    scorer = spark.scorer()
    assert isinstance(scorer, FactorScorer)
    assert scorer.user_factors.shape == (len(spark.users), 32)
    assert scorer.item_factors.shape == (len(spark.items), 32)
    # The catalogue is aligned with the (differently ordered) item ids.
    local_category = dict(zip(local.items.ids, local.catalog.category, strict=True))
    assert all(
        local_category[i] == c for i, c in zip(spark.items.ids, spark.catalog.category, strict=True)
    )


def test_server_answers_from_the_spark_bundle(bundles: dict[str, Bundle]) -> None:
    """Published into the embedded store, the server's domain layer serves it like any bundle."""
    from recsvc.buyagain import BuyAgainLists
    from recsvc.store import open_store
    from serving.config import ServeConfig
    from serving.domain import (
        BuyAgainQuery,
        PopularQuery,
        RecommendationService,
        RecommendQuery,
        SimilarQuery,
        Source,
    )

    bundle = bundles["spark"]
    store = open_store("memory://spark-parity")
    store.publish(bundle, progress=False)
    service = RecommendationService(store, ServeConfig(store="memory://spark-parity"))
    service.start()
    try:
        assert service.ready and service.model_info().model_version == bundle.version
        user = bundle.users.id_of(0)
        answer = service.recommend(RecommendQuery(user_id=user, k=K))
        expected = [bundle.items.id_of(int(i)) for i in bundle.array("candidates/items")[0, :K]]
        assert answer.source == Source.PERSONALIZED
        assert [item.item_id for item in answer.items] == expected
        item = bundle.items.id_of(0)
        similar = service.similar_items(SimilarQuery(item_id=item, k=5))
        assert len(similar.items) == 5 and item not in {i.item_id for i in similar.items}
        assert len(service.popular(PopularQuery(k=5)).items) == 5
        buyer = int(np.flatnonzero(np.diff(BuyAgainLists.read(bundle).indptr))[0])
        as_of = float(bundle.manifest["trained_until"])
        again = service.buy_again(
            BuyAgainQuery(user_id=bundle.users.id_of(buyer), k=5, as_of=as_of)
        )
        assert len(again.items) >= 1
    finally:
        service.stop()
        store.close()


def _aligned(bundle: Bundle, reference: Bundle) -> tuple[np.ndarray, np.ndarray]:
    """Row and column permutations taking `reference`'s indexes to `bundle`'s."""
    users = np.array([bundle.users.get(u) for u in reference.users.ids])
    items = np.array([bundle.items.get(i) for i in reference.items.ids])
    return users, items


def test_seen_matrix_and_candidates_match_local(bundles: dict[str, Bundle]) -> None:
    local, spark = bundles["local"], bundles["spark"]
    users, items = _aligned(spark, local)
    seen = spark.seen[users][:, items]
    assert (seen != 0).nnz == local.seen.nnz
    np.testing.assert_allclose(seen.toarray(), local.seen.toarray(), rtol=1e-5)
    candidates = np.asarray(spark.array("candidates/items"))
    assert candidates.shape == (len(spark.users), 50)
    rows = np.repeat(np.arange(candidates.shape[0]), candidates.shape[1])
    cols = candidates.ravel()
    valid = cols >= 0
    assert valid.mean() > 0.99
    assert not np.asarray(spark.seen[rows[valid], cols[valid]]).any()  # never a seen item
    similar = np.asarray(spark.array("similar/indices"))
    assert similar.shape == (len(spark.items), 50)
    assert not (similar == np.arange(len(spark.items))[:, None]).any()  # never the item itself


def test_commerce_lists_match_local(bundles: dict[str, Bundle]) -> None:
    """Rules, buy-again, RFM segments and popularity: same definitions, same answers."""
    from recsvc.rules import RuleSet
    from training.segments import Segments

    local, spark = bundles["local"], bundles["spark"]
    rules = {
        name: RuleSet.load(b.path / "rules").to_frame(b.items.ids) for name, b in bundles.items()
    }
    _assert_same_rules(rules["spark"], rules["local"])

    spark_due, local_due = _due(spark), _due(local)
    assert len(local_due) > 0
    pd.testing.assert_frame_equal(spark_due, local_due, rtol=1e-5)
    pd.testing.assert_frame_equal(_rfm(spark), _rfm(local))
    clusters = Segments.read(spark).cluster
    assert len(set(clusters.tolist()) - {-1}) == 8

    for name in ("global", "trending", "category"):
        lists = {e: b.popularity(name) for e, b in bundles.items()}
        assert lists["spark"].names == lists["local"].names
        for group in lists["local"].names:
            _assert_same_ranking(
                *(_ranked(bundles[e], lists[e].get(group)) for e in ("spark", "local"))  # type: ignore[arg-type]
            )
    assert spark.popularity("segment").names == local.popularity("segment").names
    assert len(spark.popularity("cluster").names) == 8


def _due(bundle: Bundle) -> pd.DataFrame:
    """The bundle's buy-again lists by customer and item id."""
    from recsvc.buyagain import BuyAgainLists

    lists = BuyAgainLists.read(bundle)
    return pd.DataFrame(
        {
            "user_id": np.asarray(bundle.users.ids, dtype=object)[lists.row_users()],
            "item_id": np.asarray(bundle.items.ids, dtype=object)[np.asarray(lists.items)],
            "next_due": np.asarray(lists.next_due),
            "count": np.asarray(lists.count),
            "due_score": np.asarray(lists.due_score),
        }
    ).sort_values(["user_id", "item_id"], ignore_index=True)


def _rfm(bundle: Bundle) -> pd.DataFrame:
    """The bundle's RFM scores and segment names by customer id."""
    from training.segments import Segments

    frame = Segments.read(bundle).to_frame()
    frame["user_id"] = np.asarray(bundle.users.ids, dtype=object)[frame["user_index"]]
    columns = ["user_id", "segment", "frequency", "r", "f", "m"]
    return frame[columns].sort_values("user_id", ignore_index=True)


def _ranked(bundle: Bundle, entry: tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
    items, scores = entry
    return {bundle.items.id_of(int(i)): float(s) for i, s in zip(items, scores, strict=True)}


def _assert_same_ranking(spark: dict[str, float], local: dict[str, float]) -> None:
    """Same items with the same scores, up to the order of ties (item indexes differ by engine)."""
    assert len(spark) == len(local)
    for item in spark.keys() & local.keys():
        assert spark[item] == pytest.approx(local[item], rel=1e-5)
    cutoff = min(local.values())  # a tie at the end of the list may keep either item
    for item in spark.keys() ^ local.keys():
        assert (spark.get(item) or local[item]) == pytest.approx(cutoff, rel=1e-5)


def _assert_same_rules(spark: pd.DataFrame, local: pd.DataFrame) -> None:
    keys = ["antecedents", "consequent"]
    spark = spark.sort_values(keys, ignore_index=True)
    local = local.sort_values(keys, ignore_index=True)
    assert len(local) > 0
    assert spark[keys].equals(local[keys])
    for metric in ("support", "confidence", "lift", "leverage", "conviction"):
        np.testing.assert_array_equal(
            spark[metric].to_numpy(), local[metric].to_numpy(), err_msg=metric
        )


# --- corner cases through both engines -------------------------------------------------------

SMALL = {
    "default_recommender": "popular",
    "als.enabled": False,
    "ease.enabled": False,
    "itemknn.enabled": False,
}


@pytest.fixture(scope="module")
def small_store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from recsvc.synth import SynthConfig, generate, write

    root = tmp_path_factory.mktemp("spark-small")
    return write(generate(SynthConfig(users=120, items=30, days=30, seed=5, clusters=3)), root)


def _train_both(
    spark: Any, root: Path, events: Path, config: TrainConfig, **kwargs: Any
) -> dict[str, Bundle]:
    """The same log and config through the local engine and Spark."""
    from training.engines.spark import train_spark
    from training.pipeline import train

    return {
        "local": Bundle(train(events, root / "local", config, **kwargs).path),
        "spark": Bundle(train_spark(events, root / "spark", config, spark=spark, **kwargs).path),
    }


@pytest.mark.parametrize("event_type", [None, "interaction"])
def test_a_log_without_event_types_buys_again_like_local(
    spark: Any, small_store: dict[str, Path], tmp_path: Path, event_type: str | None
) -> None:
    """Every row of a log without event types is a purchase: buy-again lists, no prospects."""
    path = tmp_path / "untyped.csv"
    events = pd.read_csv(small_store["events"], dtype=str, keep_default_na=False)
    events.drop(columns=["event_type"]).to_csv(path, index=False)
    bundles = _train_both(
        spark, tmp_path, path, _config(**SMALL), load_options=LoadOptions(event_type=event_type)
    )
    local_due = _due(bundles["local"])
    assert len(local_due) > 0
    pd.testing.assert_frame_equal(_due(bundles["spark"]), local_due, rtol=1e-5)
    local_rfm = _rfm(bundles["local"])
    assert (local_rfm["segment"] != "prospect").all()  # everyone bought something
    pd.testing.assert_frame_equal(_rfm(bundles["spark"]), local_rfm)


def test_hashed_forget_entries_are_matched_by_train_spark(
    spark: Any, small_store: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from recsvc.privacy import IdHasher
    from training.engines.spark import train_spark

    secret = b"0123456789abcdef-test-secret"
    monkeypatch.setenv("RECSVC_ID_SECRET", secret.decode())
    user = pd.read_csv(small_store["events"], dtype=str, nrows=1)["user_id"][0]
    forget = tmp_path / "forget.txt"
    forget.write_text(IdHasher(secret).forget_entry(user) + "\n")  # as a hash_ids store lists it
    result = train_spark(
        small_store["events"], tmp_path / "b", _config(**SMALL), forget_list=forget, spark=spark
    )
    bundle = Bundle(result.path)
    assert user not in bundle.users and len(bundle.users) > 0
    assert bundle.manifest["forgotten_users"] == 1


def test_forgotten_customers_items_and_orders_leave_both_engines(
    spark: Any, small_store: dict[str, Path], tmp_path: Path
) -> None:
    """An item or order only a forgotten customer had is in neither bundle, unless the items file
    lists the item; the manifest counts the customers dropped, not the list's length."""
    events = pd.read_csv(small_store["events"], dtype=str, keep_default_na=False)
    theirs = {"user_id": "zforget", "event_type": "purchase", "timestamp": "2026-01-05T00:00:00Z"}
    extra = pd.DataFrame(
        [
            {**theirs, "item_id": "secret_item", "order_id": "secret_order"},
            {**theirs, "item_id": "listed_item", "order_id": "secret_order"},
        ]
    )
    path = tmp_path / "events.csv"
    pd.concat([events, extra]).to_csv(path, index=False)
    items = tmp_path / "items.csv"
    items.write_text(small_store["items"].read_text().rstrip("\n") + "\nlisted_item,,,,\n")
    forget = tmp_path / "forget.txt"
    forget.write_text("zforget\nnot_in_this_log\n")
    bundles = _train_both(
        spark, tmp_path, path, _config(**SMALL), items=items, forget_list=forget
    )
    local, spark_bundle = bundles["local"], bundles["spark"]
    assert "secret_item" not in local.items and "listed_item" in local.items
    assert set(spark_bundle.items.ids) == set(local.items.ids)
    assert spark_bundle.manifest["counts"] == local.manifest["counts"]  # orders among them
    assert spark_bundle.manifest["forgotten_users"] == local.manifest["forgotten_users"] == 1


def test_old_events_stay_seen_with_a_short_half_life(
    spark: Any, small_store: dict[str, Path], tmp_path: Path
) -> None:
    """A month of events with a half-life of hours: old ones fade to the floor, never to zero."""
    config = _config(**SMALL, **{"events.half_life_days": 0.2})
    bundles = _train_both(spark, tmp_path, small_store["events"], config)
    local, spark_bundle = bundles["local"], bundles["spark"]
    users, items = _aligned(spark_bundle, local)
    seen = spark_bundle.seen[users][:, items]
    assert (seen != 0).nnz == local.seen.nnz
    np.testing.assert_allclose(seen.toarray(), local.seen.toarray(), rtol=1e-5)


def test_spark_draws_no_console_progress_bars(spark: Any) -> None:
    # SPARK_CONF leaves it unset: this is spark_session's own default (recsvc shows its steps)
    assert spark.sparkContext.getConf().get("spark.ui.showConsoleProgress") == "false"


# --- association rules on Groceries ------------------------------------------------------------

GROCERIES = LoadOptions(columns={"user_id": "order_id", "order_id": "order_id"})
RULES_ONLY = {
    "default_recommender": "popular",
    "als.enabled": False,
    "ease.enabled": False,
    "itemknn.enabled": False,
    "buyagain.enabled": False,
    "segments.enabled": False,
    "rules.min_support": 0.002,
    "rules.min_confidence": 0.1,
    "rules.max_len": 3,
}


def test_groceries_rules_equal_local(spark: Any, groceries_path: Path, tmp_path: Path) -> None:
    from recsvc.rules import RuleSet
    from training.engines.spark import train_spark
    from training.pipeline import train

    config = _config(**RULES_ONLY)
    local = Bundle(train(groceries_path, tmp_path / "local", config, load_options=GROCERIES).path)
    spark_bundle = Bundle(
        train_spark(
            groceries_path, tmp_path / "spark", config, load_options=GROCERIES, spark=spark
        ).path
    )
    frames = [RuleSet.load(b.path / "rules").to_frame(b.items.ids) for b in (spark_bundle, local)]
    _assert_same_rules(*frames)
    assert spark_bundle.manifest["rules"] == local.manifest["rules"]
    # Without factors both engines fall back to co-occurrence cosine for similar items: the
    # scores at each rank agree (ties may name different items).
    _, items = _aligned(spark_bundle, local)
    spark_scores = np.asarray(spark_bundle.array("similar/scores"))[items]
    np.testing.assert_allclose(spark_scores, np.asarray(local.array("similar/scores")), rtol=1e-5)
    print(
        f"Groceries: {len(frames[0])} rules from {local.manifest['rules']['orders']} baskets, equal"
    )


# --- loading: the local loader's rows, reasons and row numbers ---------------------------------

BAD_LOG = """user_id,item_id,event_type,timestamp,order_id,quantity,price
u1,i1,view,2026-01-01T10:00:00Z,,,
u1,i2,purchase,2026-01-02T10:00:00Z,o1,2,3.5
,i3,view,2026-01-01,,,
u2,,view,2026-01-01,,,
u2,i1,teleport,2026-01-01,,,
u2,i1,purchase,not a time,o2,1,
u3,i1,purchase,1767261600,C9,1,2
u3,i4,purchase,1767261600000,o3,-1,2
u3,i5,purchase,1767261600,o4,0,2
u3,i6,purchase,1767261600,o5,x,2
u3,i7,purchase,1767261600,o6,1,-4
u4,i8,,2026-01-03,,,
{long},i1,view,2026-01-03,,,
u4,i9,CART,2026-01-03,,1,
u5,i1,view,,,,
u5,i2,view,1767261600000000,,,
u5,i3,view,1767261600000000000,,,
""".replace("{long}", "u" * 300)


def _reports(spark: Any, path: Path, options: LoadOptions) -> tuple[Any, Any]:
    from training.engines.spark import Cache, effective_load_options, load_spark_log

    options = effective_load_options(options, TrainConfig())
    _, local = load_events(path, options)
    cache = Cache()
    try:
        spark_log, _ = load_spark_log(spark, str(path), options, cache)
        return spark_log.report, local
    finally:
        cache.release()


def test_bad_rows_counted_like_the_local_loader(spark: Any, tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text(BAD_LOG)
    spark_report, local = _reports(spark, path, LoadOptions())
    assert spark_report.to_dict() == local.to_dict()
    assert local.rows_bad == 12 and len(local.bad_rows) == 12  # one row per reason


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_bad_rows_numbered_like_the_local_loader(spark: Any, tmp_path: Path, fmt: str) -> None:
    # malformed records between bad rows: both engines number records in file order
    if fmt == "csv":
        text = "user_id,item_id\nu1,i1\nu2,i2,extra\n,i3\nu4,i4\nu5,i5,x,y\n,i6\n"
    else:  # blank lines (empty, spaces and tabs) are no records in JSON Lines either
        text = "\n".join(['{"user_id": "u1", "item_id": "i1"}', "", '{"item_id": "i2"}', " \t ",
                          "{broken", '{"user_id": "u4", "item_id": "i4"}', "", '{"item_id": "i5"}']) + "\n"
    path = tmp_path / f"events.{fmt}"
    path.write_text(text)
    spark_report, local = _reports(spark, path, LoadOptions())
    assert spark_report.to_dict() == local.to_dict()
    assert sorted(n for numbers in local.examples.values() for n in numbers) == (
        [2, 3, 5, 6] if fmt == "csv" else [2, 3, 5])


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_other_formats_and_mappings_counted_like_local(
    spark: Any, tmp_path: Path, fmt: str
) -> None:
    frame = pd.read_csv(pd.io.common.StringIO(BAD_LOG), dtype=str, keep_default_na=False)
    frame = frame.rename(columns={"user_id": "CustomerID", "item_id": "StockCode"})
    path = tmp_path / f"events.{fmt}"
    if fmt == "parquet":
        frame.replace("", None).to_parquet(path, index=False)
    else:
        lines = [
            json.dumps({k: v for k, v in row.items() if v != ""})
            for row in frame.to_dict("records")
        ]
        path.write_text("\n".join([*lines, "{broken", "[1, 2]"]) + "\n")
    options = LoadOptions(columns={"user_id": "CustomerID", "item_id": "StockCode"})
    spark_report, local = _reports(spark, path, options)
    assert spark_report.rows_read == local.rows_read
    assert spark_report.rows_kept == local.rows_kept
    assert dict(spark_report.bad_rows) == dict(local.bad_rows)


def test_json_lines_keys_set_late_counted_like_local(spark: Any, tmp_path: Path) -> None:
    from tests.test_events import LATE_KEYS

    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in LATE_KEYS))
    spark_report, local = _reports(spark, path, LoadOptions(chunk_rows=2))
    assert spark_report.to_dict() == local.to_dict()
    assert local.rows_kept == 2


def test_times_out_of_range_counted_like_local(spark: Any, tmp_path: Path) -> None:
    from tests.test_events import ODD_TIMES

    path = tmp_path / "odd.csv"
    path.write_text(ODD_TIMES)
    spark_report, local = _reports(spark, path, LoadOptions())
    assert spark_report.to_dict() == local.to_dict()
    assert local.rows_kept == 3


@pytest.mark.parametrize("case", [
    "an unused column and a line with a field too many", "the first row with a field too many",
    "doubled quotes inside a quoted id", "an epoch far too large", "blank order ids",
    "java number syntax", "now and today among epoch times", "numbers beyond float32", "blank lines",
    "a blank line before the first row with a field too many",
])
def test_odd_csvs_read_like_local(spark: Any, tmp_path: Path, case: str) -> None:
    from tests.test_events import ODD_CSVS
    from training.engines.spark import Cache, effective_load_options, load_spark_log

    path = tmp_path / "odd.csv"
    path.write_text(ODD_CSVS[case])
    options = effective_load_options(LoadOptions(), TrainConfig())
    local_log, local = load_events(path, options)
    cache = Cache()
    try:
        spark_log, _ = load_spark_log(spark, str(path), options, cache)
        rows = spark_log.events.join(spark_log.users, "user").join(spark_log.items, "item")
        kept = sorted((r["user_id"], r["item_id"], r["order_id"]) for r in rows.collect())
        report = spark_log.report
    finally:
        cache.release()
    assert report.to_dict() == local.to_dict()
    orders = [None if o < 0 else local_log.orders.ids[o] for o in local_log.order]
    assert kept == sorted(zip(local_log.users.decode(local_log.user), local_log.items.decode(local_log.item),
                              orders, strict=True))


# Float ids as pandas exports them from a column with gaps: in Parquet a float column (read as
# whole numbers), in JSON Lines numbers (read as the number's text, like a quoted "17850.0").
FLOAT_IDS = {
    "floats.parquet": ["17850", "17851"],
    "floats.jsonl": ["17850", "17850.0", "17851.5"],
}


@pytest.mark.parametrize("name", sorted(FLOAT_IDS))
def test_float_ids_read_like_local(spark: Any, tmp_path: Path, name: str) -> None:
    from training.engines.spark import Cache, effective_load_options, load_spark_log

    path = tmp_path / name
    if name.endswith(".parquet"):
        pd.DataFrame({"user_id": [17850.0, 17851.0, None], "item_id": ["a", "b", "c"]}).to_parquet(path)
    else:
        path.write_text(
            '{"user_id": 17850.0, "item_id": "a"}\n{"user_id": "17850.0", "item_id": "b"}\n'
            '{"user_id": 17850, "item_id": "c"}\n{"user_id": 17851.5, "item_id": "d"}\n'
            '{"user_id": null, "item_id": "e"}\n'
        )
    options = effective_load_options(LoadOptions(), TrainConfig())
    local_log, local = load_events(path, options)
    cache = Cache()
    try:
        spark_log, _ = load_spark_log(spark, str(path), options, cache)
        users = sorted(r["user_id"] for r in spark_log.users.collect())
        report = spark_log.report
    finally:
        cache.release()
    assert report.to_dict() == local.to_dict()
    assert users == sorted(local_log.users.ids) == FLOAT_IDS[name]


def test_parquet_nanosecond_times_read_like_local(spark: Any, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    times = pa.array([1_767_225_600 * 10**9, 1_767_312_000 * 10**9], type=pa.timestamp("ns"))
    path = tmp_path / "ns.parquet"
    pq.write_table(pa.table({"user_id": ["u1", "u2"], "item_id": ["i1", "i2"], "timestamp": times}), path)
    spark_report, local = _reports(spark, path, LoadOptions())
    assert spark_report.to_dict() == local.to_dict() and local.rows_kept == 2


def test_a_time_format_reads_like_local(spark: Any, tmp_path: Path) -> None:
    from tests.test_events import US_DATES
    from training.engines.spark import Cache, effective_load_options, load_spark_log

    path = tmp_path / "retail.csv"
    path.write_text(US_DATES)
    options = LoadOptions(event_type="purchase", time_format="%m/%d/%Y %H:%M")
    spark_report, local = _reports(spark, path, options)
    assert spark_report.to_dict() == local.to_dict()
    assert local.rows_kept == 3
    cache = Cache()
    try:
        spark_log, _ = load_spark_log(spark, str(path), effective_load_options(options, TrainConfig()), cache)
        times = sorted(row["ts"] for row in spark_log.events.select("ts").collect())
    finally:
        cache.release()
    assert times == [1291191960, 1291191960, 1294841100]


# Text times in forms Spark's own parser refuses and the local loader (pandas' ISO 8601) reads,
# among ones neither reads; a time read late must still leave the row's next reason (u9).
TEXT_TIMES = """user_id,item_id,timestamp,quantity
u0,i0,2026-01-01T00:00:00Z,1
u1,i1,2026/01/01 10:00:00,1
u2,i2,2026/1/1 10:00,1
u3,i3,20260101T100000Z,1
u4,i4,2026-01-01T10Z,1
u5,i5,20260101 10:00:00,1
u6,i6,2026.01.02,1
u7,i7,not a time,1
u8,i8,9999/12/31 23:59:59,1
u9,i9,2026/01/03,-1
u10,i10, Today ,1
"""


def test_text_times_read_like_local(spark: Any, tmp_path: Path) -> None:
    from training.engines.spark import Cache, effective_load_options, load_spark_log

    path = tmp_path / "times.csv"
    path.write_text(TEXT_TIMES)
    options = effective_load_options(LoadOptions(), TrainConfig())
    local_log, local = load_events(path, options)
    cache = Cache()
    try:
        spark_log, _ = load_spark_log(spark, str(path), options, cache)
        rows = spark_log.events.join(spark_log.users, "user").select("user_id", "ts").collect()
        report = spark_log.report
    finally:
        cache.release()
    assert report.to_dict() == local.to_dict()
    assert local.rows_kept == 7
    users = local_log.users.decode(local_log.user)
    local_times = dict(zip(users, local_log.timestamp.tolist(), strict=True))
    assert {r["user_id"]: r["ts"] for r in rows} == local_times


ODD_IDS = [
    {"user_id": "u1", "item_id": "i1", "event_type": "view"},
    {"user_id": "u5\x01", "item_id": "i1", "event_type": "view"},  # a control character
    {"user_id": "u6", "item_id": "i\ufffd1", "event_type": "view"},  # undecodable bytes
    {"user_id": "u7", "item_id": "i1", "event_type": "vi\x02ew"},
    {"user_id": "u8", "item_id": "i2", "event_type": "cart"},
]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_unusable_ids_counted_like_local(spark: Any, tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"events.{fmt}"
    if fmt == "csv":
        pd.DataFrame(ODD_IDS).to_csv(path, index=False)
    else:
        nested = {"user_id": {"id": "u9"}, "item_id": "i1", "event_type": "view"}
        path.write_text("".join(json.dumps(row) + "\n" for row in [*ODD_IDS, nested]))
    spark_report, local = _reports(spark, path, LoadOptions())
    assert dict(spark_report.bad_rows) == dict(local.bad_rows)
    assert spark_report.rows_kept == local.rows_kept == 2
    assert len(local.bad_rows) == (4 if fmt == "jsonl" else 3)


def test_catalog_checked_like_local(spark: Any, tmp_path: Path) -> None:
    from recsvc.events import load_catalog
    from recsvc.ids import IdMap
    from training.engines.spark import Cache, _read_catalog

    path = tmp_path / "items.csv"
    path.write_text(
        "item_id,category,price,in_stock,title\n"
        "i1,coffee,3.5,yes,Beans\n"
        ",tea,1,yes,No id\n"
        "i2,tea,-1,maybe,Odd\n"
        "i3\x01,tea,1,yes,Control\n"
        "\n"  # not a row
        "i4,tea,1,yes,Too,many,fields\n"
        "i5,tea,1e39,yes,Beyond float32\n"
        "i1,coffee,4.0,no,Beans again\n"
    )
    report = LoadReport()
    local = load_catalog(path, IdMap(), report)
    spark_report = LoadReport()
    cache = Cache()
    try:
        frame = _read_catalog(spark, str(path), spark_report, cache)
        rows = {r["item_id"]: r for r in frame.collect()}
    finally:
        cache.release()
    assert spark_report.to_dict() == report.to_dict()
    assert report.examples["catalog: malformed line (wrong number of fields)"] == [5]
    assert spark_report.notes == report.notes == [
        "catalog: item_id repeated by a later row in 1 row; each item's last row is used"]
    assert set(rows) == {"i1", "i2", "i5"}
    assert rows["i5"]["price"] is None and np.isnan(local.price[2])  # counted, blanked
    assert rows["i1"]["price"] == local.price[0] == 4.0 and not rows["i1"]["in_stock"]  # last wins
    assert rows["i2"]["price"] is None and rows["i2"]["in_stock"]  # blanked, still for sale


def test_forgotten_customers_leave_no_trace(
    spark: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from recsvc.privacy import IdHasher
    from training.engines.spark import Cache, effective_load_options, load_spark_log

    secret = b"0123456789abcdef-test-secret"
    monkeypatch.setenv("RECSVC_ID_SECRET", secret.decode())
    path = tmp_path / "events.csv"
    path.write_text(BAD_LOG + "u3,i2,view,2026-01-04,,,\n")
    forget = {"u1", IdHasher(secret).forget_entry("u3")}
    cache = Cache()
    try:
        spark_log, _ = load_spark_log(
            spark, str(path), effective_load_options(None, TrainConfig()), cache, forget=forget
        )
        users = {r["user_id"] for r in spark_log.users.collect()}
        assert users == {"u4", "u5"}  # u1 and u3 forgotten; every row of u2 is bad
        assert spark_log.forgotten_users == 2
        assert any("forgotten customers dropped" in note for note in spark_log.report.notes)
    finally:
        cache.release()


def test_cli_trains_with_the_spark_engine(
    spark: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from recsvc.cli import main

    path = tmp_path / "events.csv"
    path.write_text(BAD_LOG)
    code = main(
        [
            "train",
            "--engine",
            "spark",
            "--events",
            str(path),
            "--out",
            str(tmp_path / "b"),
            "--no-als",
            "--no-segments",
            "--no-rules",
            "--no-buyagain",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "rows read 17, kept 5, bad 12" in out
    bundle = Bundle(tmp_path / "b")
    assert bundle.manifest["engine"]["name"] == "spark"
    assert bundle.manifest["rows"]["bad_rows"]["unknown event_type"] == 1


def test_bad_input_is_a_clear_error(spark: Any, tmp_path: Path) -> None:
    from recsvc.errors import InvalidInput, TooManyBadRows
    from training.engines.spark import train_spark

    path = tmp_path / "events.csv"
    path.write_text(BAD_LOG)
    with pytest.raises(TooManyBadRows, match="events.csv: 12 of 17 rows are bad"):
        train_spark(
            path, tmp_path / "b", _config(), load_options=LoadOptions(max_bad_rows=5), spark=spark
        )
    with pytest.raises(InvalidInput, match="--events: file not found"):
        train_spark(tmp_path / "nope.csv", tmp_path / "b", _config(), spark=spark)
    no_items = tmp_path / "bad.csv"
    no_items.write_text("user_id,sku\nu1,i1\n")
    with pytest.raises(InvalidInput, match="item_id: column 'item_id' not found"):
        train_spark(no_items, tmp_path / "b", _config(), spark=spark)
    assert not list((tmp_path / "b").glob(".partial-*"))  # nothing half-written is left


def test_segments_of_a_log_without_times_match_local(spark: Any, tmp_path: Path) -> None:
    from recsvc.config import SegmentsConfig
    from tests.test_segments import UNTIMED_LOG
    from training.engines.spark import (
        Cache,
        effective_load_options,
        fit_segments_spark,
        load_spark_log,
    )
    from training.segments import fit_segments

    path = tmp_path / "untimed.csv"
    path.write_text(UNTIMED_LOG)
    options = effective_load_options(LoadOptions(), TrainConfig())
    log, _ = load_events(path, options)
    local = fit_segments(log, 1_800_000_000, None, SegmentsConfig())
    expected = {u: local.segment[log.users.get(u)] for u in log.users.ids}
    cache = Cache()
    try:
        spark_log, _ = load_spark_log(spark, str(path), options, cache)
        frame = fit_segments_spark(spark_log, None, SegmentsConfig(), 1_800_000_000, cache)
        names = frame.join(spark_log.users, frame["user_index"] == spark_log.users["user"])
        got = {row["user_id"]: row["segment"] for row in names.select("user_id", "segment").collect()}
    finally:
        cache.release()
    assert got == expected and expected["ann"] == "loyal"


def test_spark_quantile_scores_match_local_on_ties(spark: Any) -> None:
    from training.engines.spark import Cache, quantile_scores_spark
    from training.segments import quantile_scores

    cache = Cache()
    try:
        for values in ([2.0], [2.0, 2.0], [2.0] * 6, [1.0, 1.0, 1.0, 1.0, 9.0]):
            frame = spark.createDataFrame([(i, v) for i, v in enumerate(values)], "user long, x double")
            scores = quantile_scores_spark(frame, "user", "x", higher_is_better=True, cache=cache)
            got = [r["score"] for r in scores.orderBy("user").collect()]
            assert got == quantile_scores(np.array(values)).tolist(), values
    finally:
        cache.release()


def test_spark_als_fit_seconds(spark: Any) -> None:
    from training.engines.spark import spark_als_fit_seconds

    rng = np.random.default_rng(0)
    matrix = sp.random(200, 80, density=0.05, random_state=rng, format="csr", dtype=np.float32)
    seconds = spark_als_fit_seconds(
        matrix, factors=8, iterations=3, regularization=0.05, alpha=2.0, spark=spark
    )
    assert 0 < seconds < 300
