"""Export files as a campaign tool reads them: recommend, buyagain, segments and rules write a
valid file even with no rows, whole or not at all, and leave forgotten customers out."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from recsvc.bundle import BundleWriter
from recsvc.buyagain import MIN_DUE_SCORE
from recsvc.cli import main
from recsvc.config import BuyAgainConfig, SegmentsConfig
from recsvc.events import Catalog, load_events
from recsvc.store import open_store
from tests.fixtures_grpc import make_bundle, user_id
from tests.fixtures_limits import run_with_file_size_limit
from training.buyagain import fit_buyagain
from training.segments import fit_segments

ROOT = Path(__file__).resolve().parents[1]
DAY = 86_400
START = 1_767_225_600  # 2026-01-01T00:00:00Z
CUSTOMERS = [f"c{c:02d}" for c in range(12)]

RECOMMEND_SCHEMA = {"user_id": "large_string", "rank": "int32", "item_id": "large_string",
                    "score": "float"}


def read_export(path: Path) -> pd.DataFrame:
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path, dtype={"user_id": str, "item_id": str})


def parquet_types(path: Path) -> dict[str, str]:
    return {field.name: str(field.type) for field in pq.read_schema(path)}


@pytest.fixture(scope="module")
def commerce(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle with buy-again lists and segments: customer c<n> buys milk every 7 + n days
    (five times) and tea once; 2026-02-10 is after every purchase."""
    root = tmp_path_factory.mktemp("commerce")
    lines = ["user_id,item_id,event_type,timestamp,order_id,price"]
    for n, customer in enumerate(CUSTOMERS):
        for trip in range(5):
            day = trip * (7 + n)
            lines.append(f"{customer},milk,purchase,{START + day * DAY},{customer}-{trip},1.5")
        lines.append(f"{customer},tea,purchase,{START + DAY},{customer}-tea,4.0")
    (root / "events.csv").write_text("\n".join(lines) + "\n")
    log, _ = load_events(root / "events.csv")
    now = START + 40 * DAY
    writer = BundleWriter(root / "bundles")
    writer.ids(log.users, log.items, Catalog.empty(len(log.items)))
    fit_buyagain(log, BuyAgainConfig(), now).write(writer)
    fit_segments(log, now, None, SegmentsConfig()).write(writer)
    return writer.commit({})


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


def test_recommend_exports_within_a_price_range(
    planted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--min-price / --max-price restrict the export as the server's filter does (prices are
    5 + the item's index in the planted catalogue); a bad range names its flag."""
    out = tmp_path / "recs.csv"
    assert main(["recommend", "--bundle", str(planted), "--k", "3", "--min-price", "10",
                 "--max-price", "20", "--out", str(out)]) == 0
    recs = read_export(out)
    prices = recs["item_id"].map(lambda item: 5 + int(item.rsplit("-", 1)[1]))
    assert len(recs) > 0 and prices.between(10, 20).all()
    assert recs.groupby("user_id").size().eq(3).all()  # k in the range for every customer
    capsys.readouterr()
    for flags, message in ((["--min-price", "30", "--max-price", "20"], "--min-price: 30 is above"),
                           (["--max-price", "nan"], "--max-price: must be a price"),
                           # the server's bound too (one rule), not only 0 or more
                           (["--max-price", "1e16"], "--max-price: must be a price from 0 to 1e+15")):
        assert main(["recommend", "--bundle", str(planted), *flags, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"recsvc recommend: error: {message}") and err.count("\n") == 1, err


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


@pytest.mark.parametrize(
    ("command", "suffix"),
    [("buyagain", ".csv"), ("buyagain", ".parquet"), ("segments", ".csv"), ("rules", ".csv")],
)
def test_an_export_that_fails_half_way_keeps_the_previous_file_whole(
    commerce: Path, planted: Path, tmp_path: Path, command: str, suffix: str
) -> None:
    out = tmp_path / f"export{suffix}"
    args = {
        "buyagain": ["buyagain", "--bundle", str(commerce), "--users", "all",
                     "--now", "2026-02-10"],
        "segments": ["segments", "--bundle", str(commerce)],
        "rules": ["rules", "--bundle", str(planted)],
    }[command] + ["--out", str(out)]
    assert main(args) == 0
    assert out.stat().st_size > 100  # bigger than the limit below
    previous = b"yesterday's export\n"
    out.write_bytes(previous)
    done = run_with_file_size_limit(  # files may grow to 100 bytes
        [sys.executable, "-m", "recsvc.cli", *args], 100,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    # one line naming the output (recsvc.cli), and the previous file untouched
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"recsvc {command}: error: --out: {out}: ")
    assert "File too large" in done.stderr and done.stderr.count("\n") == 1
    assert out.read_bytes() == previous
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no partial file left


@pytest.mark.parametrize("command", ["segments", "rules"])
def test_an_output_that_cannot_be_created_is_named_by_its_flag(
    commerce: Path, planted: Path, tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    out = not_a_dir / "export.csv"  # the file written beside it cannot be created either
    bundle = commerce if command == "segments" else planted
    capsys.readouterr()
    assert main([command, "--bundle", str(bundle), "--out", str(out)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err == [f"recsvc {command}: error: --out: {out}: Not a directory"]


def forgetting(*customers: str) -> str:
    """A fresh in-process store whose forget list holds `customers`; its URL."""
    url = f"memory://exports-{uuid.uuid4().hex[:6]}"
    store = open_store(url)
    for customer in customers:
        store.forget_user(customer)
    return url


def test_buyagain_and_segments_leave_out_the_customers_on_the_stores_forget_list(
    commerce: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RECSVC_STORE", raising=False)
    url = forgetting("c03", "c07")
    due = tmp_path / "due.csv"
    buyagain = ["buyagain", "--bundle", str(commerce), "--users", "all", "--now", "2026-02-10",
                "--min-score", "0", "--out", str(due)]  # every customer has a list
    assert main(buyagain) == 0
    everyone = read_export(due)
    assert set(everyone["user_id"]) == set(CUSTOMERS)
    # by default the export offers what the server would: nothing below MIN_DUE_SCORE
    assert main([arg for arg in buyagain if arg not in ("--min-score", "0")]) == 0
    offered = read_export(due)
    assert offered["score"].min() >= MIN_DUE_SCORE and len(offered) < len(everyone)
    assert "customers forgotten after training are not checked" in capsys.readouterr().out
    assert main([*buyagain, "--store", url]) == 0
    assert set(read_export(due)["user_id"]) == set(CUSTOMERS) - {"c03", "c07"}
    assert "2 forgotten customers left out" in capsys.readouterr().out
    # a file of ids: only the forgotten customers among them are counted
    listed = tmp_path / "listed.txt"
    listed.write_text("c03\nc04\n")
    assert main([*buyagain[:4], str(listed), *buyagain[5:], "--store", url]) == 0
    assert set(read_export(due)["user_id"]) == {"c04"}
    assert "1 forgotten customers left out" in capsys.readouterr().out
    # one forgotten customer's list is not shown either
    assert main(["buyagain", "--bundle", str(commerce), "--user", "c03", "--store", url]) == 3
    assert "on the forget list" in capsys.readouterr().err

    segments = tmp_path / "segments.parquet"
    assert main(["segments", "--bundle", str(commerce), "--store", url,
                 "--out", str(segments)]) == 0
    assert set(read_export(segments)["user_id"]) == set(CUSTOMERS) - {"c03", "c07"}
    printed = capsys.readouterr()
    assert "wrote 10 customers" in printed.err
    # the count table holds the same customers as the file (the forgotten ones left out)
    table = [line.split() for line in printed.out.splitlines()[1:] if line.strip()]
    assert sum(int(size) for _, size in table) == 10
    assert main(["segments", "--bundle", str(commerce)]) == 0
    table = [line.split() for line in capsys.readouterr().out.splitlines()[1:] if line.strip()]
    assert sum(int(size) for _, size in table) == len(CUSTOMERS)


@pytest.mark.parametrize("command", ["recommend", "buyagain", "segments"])
def test_exports_read_the_forget_list_of_recsvc_store_by_default(
    commerce: Path, planted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    forgotten = user_id(3) if command == "recommend" else "c03"
    monkeypatch.setenv("RECSVC_STORE", forgetting(forgotten))
    out = tmp_path / "export.csv"
    args = {
        "recommend": ["recommend", "--bundle", str(planted)],
        "buyagain": ["buyagain", "--bundle", str(commerce), "--users", "all", "--min-score", "0"],
        "segments": ["segments", "--bundle", str(commerce)],
    }[command]
    assert main([*args, "--out", str(out)]) == 0
    exported = set(read_export(out)["user_id"])
    assert forgotten not in exported and len(exported) > 10


@pytest.mark.parametrize("who", [["--users", "all"], ["--user", "c01"]])
def test_a_buyagain_export_with_no_row_keeps_its_column_types(
    commerce: Path, tmp_path: Path, who: list[str]
) -> None:
    out = tmp_path / "due.parquet"
    common = ["buyagain", "--bundle", str(commerce), *who, "--now", "2026-02-10", "--out", str(out)]
    assert main(common) == 0
    full = parquet_types(out)
    assert main([*common, "--min-score", "2"]) == 0  # scores are at most 1: no row
    assert pd.read_parquet(out).empty and parquet_types(out) == full
    assert full["user_id"] == full["item_id"] == full["reason"] == "large_string"


def _running_export(target: Path, pid: int | None = None) -> subprocess.Popen[str]:
    """An export to `target` in another process, stopped half-way until a line on its stdin;
    `pid`: the process id it names its partial file by (as one in another PID namespace, a
    container sharing the volume, whose id means nothing here)."""
    code = (
        "import os, sys\n"
        "from recsvc.commands.exports import replaced_when_complete\n"
        + (f"os.getpid = lambda: {pid}\n" if pid is not None else "")
        + f"with replaced_when_complete({str(target)!r}) as partial:\n"
        "    partial.write_text('user_id,item_id\\nu1,7\\n')\n"
        "    print(partial.name, flush=True)\n"
        "    sys.stdin.readline()\n"
    )
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent)


def test_a_killed_exports_partial_file_is_removed_by_the_next_export(tmp_path: Path) -> None:
    """A SIGKILLed export leaves its partial file (no `finally` runs); it holds customers' rows,
    perhaps of customers forgotten since, so the next export to that target removes it. A
    partial of an export that still runs (a concurrent export) and other files are kept."""
    from recsvc.commands.exports import write_frame

    out = tmp_path / "recs[1].csv"  # glob characters in the name
    killed, running = _running_export(out), _running_export(out)
    try:
        assert killed.stdout is not None and running.stdout is not None
        dead = tmp_path / killed.stdout.readline().strip()
        alive = tmp_path / running.stdout.readline().strip()
        killed.kill()
        killed.wait()
        assert dead.exists() and alive.exists() and dead != alive
        other = tmp_path / ".other.csv.1.partial"
        other.write_text("another target's")
        write_frame(pd.DataFrame({"user_id": ["u2"], "item_id": ["9"]}), out)
        assert not dead.exists()
        assert alive.exists() and other.exists()
        assert out.read_text().splitlines() == ["user_id,item_id", "u2,9"]
        running.communicate("go\n", timeout=60)
        assert running.returncode == 0 and not alive.exists()
        assert out.read_text().splitlines() == ["user_id,item_id", "u1,7"]
    finally:
        for process in (killed, running):
            if process.poll() is None:
                process.kill()


def test_a_running_export_whose_process_id_is_not_ours_to_see_keeps_its_file(tmp_path: Path) -> None:
    """An export in another container (PID namespace) or on another host writing to the same
    volume names its partial file by a process id that is no process here: the next export
    here took it for a killed one's and deleted it, and the running export then failed
    ('No such file or directory') instead of completing."""
    from recsvc.commands.exports import write_frame

    out = tmp_path / "recs.csv"
    unseen = 4_194_304  # Linux's PID_MAX_LIMIT: every process id here is below it
    elsewhere = _running_export(out, pid=unseen)
    try:
        assert elsewhere.stdout is not None
        partial = tmp_path / elsewhere.stdout.readline().strip()
        assert partial.name == f".recs.csv.{unseen}.partial" and partial.exists()
        write_frame(pd.DataFrame({"user_id": ["u2"], "item_id": ["9"]}), out)
        assert partial.exists()
        _, errors = elsewhere.communicate("go\n", timeout=60)
        assert elsewhere.returncode == 0, errors
        assert out.read_text().splitlines() == ["user_id,item_id", "u1,7"]
    finally:
        if elsewhere.poll() is None:
            elsewhere.kill()
