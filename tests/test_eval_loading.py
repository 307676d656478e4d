"""`recsvc eval` and `recsvc tune` read the log as `recsvc train` does with the same config, and
refuse to report on nobody."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsvc.cli import main


def _one_error_line(capsys: pytest.CaptureFixture[str], command: str) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith(f"recsvc {command}: error: "), err
    return err[0]


@pytest.fixture
def orders(tmp_path: Path) -> Path:
    """Orders whose ids all start with 'C' (not cancellations in this shop), every third row
    of an event type the default config does not know."""
    rows = ["user_id,item_id,event_type,order_id"]
    for user in range(30):
        for k in range(6):
            kind = "purchase" if k % 3 else "teleport"
            rows.append(f"u{user},i{(user * 3 + k) % 12},{kind},C{user * 10 + k}")
    path = tmp_path / "orders.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_eval_keeps_the_rows_train_keeps_with_the_same_config(
    orders: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "shop.toml"
    config.write_text('[events]\ncancel_prefix = ""\n')
    data = ["--events", str(orders), "--config", str(config)]
    assert main(["train", *data, "--out", str(tmp_path / "b"), "--no-als", "--no-segments"]) == 0
    trained = capsys.readouterr().out.splitlines()[:2]
    assert trained == [
        "rows read 180, kept 120, bad 60",
        "         60  unknown event_type (e.g. rows 1, 4, 7, 10, 13)",
    ]
    assert main(["eval", *data, "--models", "popular"]) == 0
    printed = capsys.readouterr()
    assert printed.err.splitlines()[:2] == trained
    assert "seed 42: 30 users evaluated" in printed.out


@pytest.mark.parametrize("command", ["eval", "tune"])
def test_a_log_with_no_usable_row_is_an_error_not_a_report_on_nobody(
    command: str, orders: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.toml"
    extra = ["--out", str(out), "--trials", "1", "--models", "ease"] if command == "tune" else [
        "--models", "popular"]  # fmt: skip
    # the default config reads every 'C' order as a cancellation
    assert main([command, "--events", str(orders), *extra]) == 2
    line = _one_error_line(capsys, command)  # the reasons are in it, not in extra lines
    assert "--events: no usable rows (180 read; bad: 180 cancelled order" in line
    assert not out.exists()


@pytest.mark.parametrize("command", ["eval", "tune"])
def test_a_split_that_leaves_nobody_to_evaluate_is_an_error(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = tmp_path / "events.csv"
    events.write_text("user_id,item_id\n" + "".join(f"u{u},i{u % 4}\n" for u in range(20)))
    out = tmp_path / "out.toml"
    extra = ["--out", str(out), "--trials", "1", "--models", "ease"] if command == "tune" else [
        "--models", "popular"]  # fmt: skip
    assert main([command, "--events", str(events), *extra]) == 2
    err = capsys.readouterr().err.splitlines()  # the load summary, then the error
    assert err[0] == "rows read 20, kept 20, bad 0" and len(err) == 2
    line = err[1]
    assert "--split: the random split" in line and "nothing to evaluate" in line
    assert not out.exists()
