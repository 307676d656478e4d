"""Export files as a campaign tool reads them: recommend, buyagain, segments and rules write a
valid file even with no rows, whole or not at all, and leave forgotten customers out."""

from __future__ import annotations

import uuid
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from recsvc.cli import main
from recsvc.store import open_store
from tests.fixtures_grpc import make_bundle, user_id

RECOMMEND_SCHEMA = {"user_id": "large_string", "rank": "int32", "item_id": "large_string",
                    "score": "float"}


def read_export(path: Path) -> pd.DataFrame:
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path, dtype={"user_id": str, "item_id": str})


def parquet_types(path: Path) -> dict[str, str]:
    return {field.name: str(field.type) for field in pq.read_schema(path)}


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The planted bundle with popularity lists cut to the top five items (all toys), so that
    a customer the bundle does not know gets nothing in another category."""
    return make_bundle(tmp_path_factory.mktemp("planted"), list_length=5)


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_recommend_exports_every_batch_when_the_first_comes_out_empty(
    planted: Path, tmp_path: Path, suffix: str
) -> None:
    # 1024 unknown customers (one batch) get nothing in books; a known one follows
    users = tmp_path / "users.txt"
    users.write_text("".join(f"ghost-{i}\n" for i in range(1024)) + user_id(0) + "\n")
    out = tmp_path / f"recs{suffix}"
    assert main(["recommend", "--bundle", str(planted), "--users", str(users), "--k", "3",
                 "--category", "books", "--out", str(out)]) == 0
    recs = read_export(out)
    assert list(recs.columns) == list(RECOMMEND_SCHEMA)
    assert set(recs["user_id"]) == {user_id(0)} and list(recs["rank"]) == [1, 2, 3]
    if suffix == ".parquet":
        assert parquet_types(out) == RECOMMEND_SCHEMA


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_recommend_with_every_customer_left_out_writes_an_empty_file_with_its_columns(
    planted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str
) -> None:
    url = f"memory://exports-{uuid.uuid4().hex[:6]}"
    open_store(url).forget_user(user_id(3))
    users = tmp_path / "users.txt"
    users.write_text(user_id(3) + "\n")
    out = tmp_path / f"recs{suffix}"
    assert main(["recommend", "--bundle", str(planted), "--users", str(users),
                 "--store", url, "--out", str(out)]) == 0
    assert "wrote 0 rows for 0 users" in capsys.readouterr().out
    recs = read_export(out)
    assert recs.empty and list(recs.columns) == list(RECOMMEND_SCHEMA)
    if suffix == ".parquet":
        assert parquet_types(out) == RECOMMEND_SCHEMA
    else:
        assert out.read_text() == "user_id,rank,item_id,score\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, "users.txt"])
