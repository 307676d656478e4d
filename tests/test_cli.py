"""The CLI as a data engineer uses it: train, recommend, and clear one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from recsvc.cli import main


def recsvc(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "recsvc.cli", *args], capture_output=True, text=True, cwd=cwd, env=env
    )


@pytest.mark.slow
def test_movielens_train_and_recommend(ml100k_path: Path, tmp_path: Path) -> None:
    bundles = tmp_path / "bundles"
    trained = recsvc("train", "--events", str(ml100k_path), "--out", str(bundles))
    assert trained.returncode == 0, trained.stderr
    assert "rows read 100000, kept 100000, bad 0" in trained.stdout
    out = tmp_path / "recs.csv"
    done = recsvc("recommend", "--bundle", str(bundles / "latest"), "--users", "all", "--k", "10",
                  "--out", str(out))
    assert done.returncode == 0, done.stderr
    recs = pd.read_csv(out, dtype={"user_id": str, "item_id": str})
    ratings = pd.read_csv(ml100k_path, dtype={"user_id": str, "item_id": str})
    assert recs["user_id"].nunique() == 943
    per_user = recs.groupby("user_id")["item_id"]
    assert (per_user.nunique() == 10).all() and (per_user.size() == 10).all()
    seen = set(zip(ratings["user_id"], ratings["item_id"], strict=True))
    assert not any((u, i) in seen for u, i in zip(recs["user_id"], recs["item_id"], strict=True))
    assert recs.groupby("user_id")["rank"].apply(list).map(lambda r: r == list(range(1, 11))).all()


def test_bad_input_is_one_line_on_stderr(tmp_path: Path) -> None:
    events = tmp_path / "e.csv"
    events.write_text("user_id,item_id,timestamp\nu1,i1,2026-01-01\n,i2,2026-01-01\nu3,i3,never\n")
    result = recsvc("train", "--events", str(events), "--out", str(tmp_path / "b"),
                    "--max-bad-rows", "1")
    assert result.returncode == 5
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "e.csv: 2 of 3 rows are bad" in lines[0]
    missing = recsvc("train", "--events", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "b"))
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert "--events: file not found" in missing.stderr


def test_recommend_rejects_bad_k(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["recommend", "--bundle", str(tmp_path), "--k", "0", "--out", str(tmp_path / "r.csv")])
    assert code == 2
    assert "--k: must be a positive number" in capsys.readouterr().err


def test_recommend_export_honours_the_forget_list_and_never_leaves_half_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import uuid

    from recsvc.bundle import Bundle
    from recsvc.store import open_store
    from tests.fixtures_grpc import make_bundle, user_id

    bundle = make_bundle(tmp_path / "b")
    url = f"memory://export-{uuid.uuid4().hex[:6]}"
    store = open_store(url)
    store.publish(Bundle(bundle), progress=False)
    store.forget_user(user_id(3))  # after the bundle was trained
    out = tmp_path / "recs.csv"
    args = ["recommend", "--bundle", str(bundle), "--k", "3", "--out", str(out)]
    assert main(args) == 0
    assert user_id(3) in set(pd.read_csv(out)["user_id"])
    assert "customers forgotten after training are not checked" in capsys.readouterr().out
    assert main([*args, "--store", url]) == 0
    exported = set(pd.read_csv(out)["user_id"])
    assert user_id(3) not in exported and user_id(4) in exported and len(exported) == 19
    assert "1 forgotten customers left out" in capsys.readouterr().out
    # a failed export keeps the previous file whole and leaves nothing half-written
    before = out.read_bytes()
    assert main([*args, "--model", "no-such-model"]) != 0
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["b", "recs.csv"]
    # a header line is skipped; a customer called "user_id" further down is not
    users = tmp_path / "users.txt"
    users.write_text("user_id\nuser_id\n" + user_id(1) + "\n")
    assert main(["recommend", "--bundle", str(bundle), "--users", str(users), "--k", "2",
                 "--out", str(tmp_path / "two.csv")]) == 0
    assert set(pd.read_csv(tmp_path / "two.csv")["user_id"]) == {"user_id", user_id(1)}


def test_an_output_that_does_not_fit_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    from tests.fixtures_limits import run_with_file_size_limit

    done = run_with_file_size_limit(  # files may grow to 20,000 bytes
        [sys.executable, "-m", "recsvc.cli", "synth", "--users", "300", "--items", "50",
         "--out", str(tmp_path / "data")], 20_000, timeout=120,
    )
    err = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr
    assert len(err) == 1 and err[0].startswith("recsvc synth: error: --out: "), err
    assert "File too large" in err[0]


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path: Path) -> None:
    """`recsvc crosssell ... | head -1`: no BrokenPipeError traceback, the SIGPIPE status."""
    from tests.fixtures_grpc import item_id, make_bundle

    bundle = make_bundle(tmp_path / "b")
    read_end, write_end = os.pipe()
    os.close(read_end)  # as `head` does once it has its line
    try:
        done = subprocess.run(
            [sys.executable, "-m", "recsvc.cli", "crosssell", "--bundle", str(bundle), "--items",
             item_id(1), "--k", "5"],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120,
            env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
        )
    finally:
        os.close(write_end)
    assert done.returncode == 141, done.stderr
    assert done.stderr == ""


def test_ctrl_c_while_the_parser_is_built_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import recsvc.cli as cli

    def interrupted(name: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.importlib, "import_module", interrupted)  # Ctrl-C during the imports
    try:
        code = main(["synth", "--out", "x"])
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped main() (a traceback on the command line)")
    assert code == 130
    assert capsys.readouterr().err == "recsvc: interrupted\n"


def test_no_command_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert capsys.readouterr().err == "recsvc: error: give a command (see recsvc --help)\n"


def test_building_the_parser_loads_no_heavy_library() -> None:
    """`recsvc --help` (and every command's start, where Ctrl-C is not yet ours) stays quick:
    command modules import numpy, pandas and the like inside their functions."""
    done = subprocess.run(
        [sys.executable, "-c", "import sys, recsvc.cli; recsvc.cli.build_parser(); "
         "print(sorted(m for m in ('numpy', 'pandas', 'pyarrow', 'scipy', 'grpc') if m in sys.modules))"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_buyagain_help_states_the_servers_threshold(capsys: pytest.CaptureFixture[str]) -> None:
    from recsvc.buyagain import MIN_DUE_SCORE

    with pytest.raises(SystemExit):
        main(["buyagain", "--help"])
    assert f"threshold, {MIN_DUE_SCORE:g};" in " ".join(capsys.readouterr().out.split())


def test_train_out_and_spark_master_are_checked_naming_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    events = tmp_path / "events.csv"
    events.write_text("user_id,item_id\nu1,i1\nu2,i1\nu1,i2\n")
    monkeypatch.chdir(tmp_path)
    for argv, line in [
        # an unset $OUT wrote the bundle and `latest` into the working directory
        (["--out", ""], "recsvc train: error: --out: give the bundles directory (it is empty)"),
        # --out naming the events file was reported as '--events: ...: File exists'
        (["--out", str(events)], f"recsvc train: error: --out: {events} is a file, not a bundles directory"),
        # Spark's launcher died with a JAVA_GATEWAY_EXITED traceback
        (["--engine", "spark", "--spark-master", "bogus", "--out", "b"],
         "recsvc train: error: --spark-master: 'bogus' is not a Spark master URL"),
    ]:
        assert main(["train", "--events", str(events), *argv]) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith(line), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.csv"]


def test_synth_refuses_an_empty_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["synth", "--users", "10", "--items", "50", "--out", " "]) == 2
    assert capsys.readouterr().err == "recsvc synth: error: --out: give the output directory (it is empty)\n"
    assert list(tmp_path.iterdir()) == []


def test_recommend_names_model_when_the_bundle_lacks_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.fixtures_grpc import make_bundle

    bundle = make_bundle(tmp_path / "b")
    capsys.readouterr()
    out = tmp_path / "r.csv"
    assert main(["recommend", "--bundle", str(bundle), "--model", "eas", "--out", str(out)]) == 3
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("recsvc recommend: error: --model: 'eas' is not in bundle")
    assert not out.exists()
