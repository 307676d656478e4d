"""Files of customer ids as shops keep them: user lists for exports, forget lists for training.

A byte-order mark, a last line without a line break or an id starting with '#' must not lose a
customer: an export that skips one is wrong, a forget list that keeps one breaks a promise.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsvc.bundle import Bundle
from recsvc.cli import main
from recsvc.commands.recommend import read_user_file
from recsvc.config import load_train_config
from recsvc.errors import InvalidInput
from recsvc.events import MAX_ID_LENGTH
from training.pipeline import read_forget_list, train

BOM = "\ufeff"  # what Notepad and Excel's "CSV UTF-8" put first

EVENTS = "user_id,item_id\n#42,i1\n#42,i2\nu1,i1\nu1,i3\nu2,i2\nu2,i3\nu3,i1\nu3,i2\n"


@pytest.fixture
def events(tmp_path: Path) -> Path:
    path = tmp_path / "events.csv"
    path.write_text(EVENTS, encoding="utf-8")
    return path


def forget(user: str, forget_file: Path) -> int:
    """`recsvc forget --user USER --forget-file FILE` (the memory store is irrelevant here)."""
    return main(["forget", f"--user={user}", "--store", "memory://",
                 "--forget-file", str(forget_file)])  # fmt: skip


def trained_users(events: Path, out: Path, forget_list: Path) -> set[str]:
    config = load_train_config(None, {"als.iterations": 2}, environ={})
    return set(Bundle(train(events, out, config, forget_list=forget_list).path).users.ids)


@pytest.mark.parametrize(
    "text", [f"{BOM}u1\nu2\n", f"{BOM}user_id\r\nu1\r\nu2\r\n", "user_id\nu1\n\nu2"]
)
def test_a_user_file_with_a_byte_order_mark_keeps_its_first_customer(
    tmp_path: Path, text: str
) -> None:
    path = tmp_path / "users.txt"
    path.write_text(text, encoding="utf-8")
    assert read_user_file(str(path)) == ["u1", "u2"]


def test_recommend_users_from_a_file_with_a_byte_order_mark(
    events: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "--events", str(events), "--out", str(tmp_path / "b")]) == 0
    users = tmp_path / "users.txt"
    users.write_text(f"{BOM}u1\nu2\n", encoding="utf-8")
    out = tmp_path / "recs.csv"
    capsys.readouterr()
    assert main(["recommend", "--bundle", str(tmp_path / "b"), "--users", str(users), "--k", "1",
                 "--out", str(out)]) == 0  # fmt: skip
    assert "0 unknown users" in capsys.readouterr().out
    recs = pd.read_csv(out, dtype=str)
    assert sorted(recs["user_id"]) == ["u1", "u2"]
    # known customers get their own list, which leaves out what they bought
    assert list(recs.loc[recs["user_id"] == "u1", "item_id"]) == ["i2"]


def test_a_forget_list_with_a_byte_order_mark_forgets_its_first_customer(
    events: Path, tmp_path: Path
) -> None:
    listed = tmp_path / "forget.txt"
    listed.write_bytes(f"{BOM}u1\r\nu3\r\n".encode())
    assert read_forget_list(listed) == {"u1", "u3"}
    assert trained_users(events, tmp_path / "b", listed) == {"#42", "u2"}


def test_every_line_of_a_forget_file_is_an_id_even_one_starting_with_a_hash(
    events: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`recsvc forget` accepts '#42' and writes it; the trainer must not read it as a comment."""
    listed = tmp_path / "forget.txt"
    assert forget("#42", listed) == 0
    assert listed.read_text(encoding="utf-8") == "#42\n"
    assert read_forget_list(listed) == {"#42"}
    assert trained_users(events, tmp_path / "b", listed) == {"u1", "u2", "u3"}


def test_the_store_forget_list_written_to_a_file_round_trips(tmp_path: Path) -> None:
    url = f"memory://forget-file-{tmp_path.name}"
    for user in ("#42", "u1", " # spaced"):
        assert main(["forget", f"--user={user}", "--store", url]) == 0
    out = tmp_path / "forgotten.txt"
    assert main(["store", "forgotten", "--store", url, "--out", str(out)]) == 0
    assert read_forget_list(out) == {"#42", "u1", "# spaced"}


def test_forget_appends_on_a_new_line_when_the_last_line_has_no_line_break(
    events: Path, tmp_path: Path
) -> None:
    listed = tmp_path / "forget.txt"
    listed.write_text("u1", encoding="utf-8")  # written by hand, no final line break
    assert forget("u2", listed) == 0
    assert listed.read_text(encoding="utf-8") == "u1\nu2\n"
    assert trained_users(events, tmp_path / "b", listed) == {"#42", "u3"}
    # a file that ends its last line already gets no blank line
    assert forget("u3", listed) == 0
    assert listed.read_text(encoding="utf-8") == "u1\nu2\nu3\n"


ids = st.text(
    st.characters(codec="utf-8", categories=("L", "N", "P", "S", "Zs")),
    min_size=1,
    max_size=20,
).filter(lambda s: s.strip() and s.isprintable() and len(s) <= MAX_ID_LENGTH)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    before=st.sampled_from(["", "u0", "u0\n", "u0\r\n", f"{BOM}u0", f"{BOM}u0\n"]),
    users=st.lists(ids, min_size=1, max_size=4),
)
def test_every_id_forget_accepts_is_read_back_by_the_trainer(
    tmp_path: Path, before: str, users: list[str]
) -> None:
    listed = tmp_path / "forget.txt"
    listed.write_bytes(before.encode())
    for user in users:
        assert forget(user, listed) == 0
    kept_before = {"u0"} if before else set()
    assert read_forget_list(listed) == kept_before | {u.strip() for u in users}


def test_id_files_can_be_pipes(tmp_path: Path) -> None:
    import os
    import threading

    from recsvc.ids import read_id_lines

    fifo = tmp_path / "ids"
    os.mkfifo(fifo)  # what `recommend --users <(grep ... customers.csv)` hands over

    def write() -> None:
        with open(fifo, "w", encoding="utf-8") as handle:
            handle.write("u1\nu2\n")

    writer = threading.Thread(target=write)
    writer.start()
    assert read_id_lines(fifo, "--users") == ["u1", "u2"]
    writer.join()
    with pytest.raises(InvalidInput, match="--users: .* is not an existing file"):
        read_id_lines(tmp_path, "--users")
