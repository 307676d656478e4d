"""Config validation: a setting training cannot use is refused when the config is loaded,
naming the setting, not after the models are fitted."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from recsvc.cli import main
from recsvc.config import load_train_config
from recsvc.errors import InvalidInput


def test_rules_max_len_below_two_is_refused_up_front(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "rules.toml"
    config.write_text("[rules]\nmax_len = 1\n")
    with pytest.raises(InvalidInput, match=r"^rules\.max_len: must be at least 2, got 1$"):
        load_train_config(config, environ={})
    with pytest.raises(InvalidInput, match=r"^rules\.max_len: "):
        load_train_config(None, {"rules.max_len": 0}, environ={})
    assert load_train_config(None, {"rules.max_len": 2}, environ={}).rules.max_len == 2

    events = tmp_path / "events.csv"
    events.write_text("user_id,item_id,order_id\nu1,i1,o1\nu1,i2,o1\nu2,i1,o2\n")
    capsys.readouterr()
    argv = ["train", "--events", str(events), "--out", str(tmp_path / "b"), "--config", str(config)]
    code = main(argv)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    # one line, before any step ran (no '  load ...' progress) and no bundle written
    assert code == 2 and err == ["recsvc train: error: rules.max_len: must be at least 2, got 1"]
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize(("toml", "named"), [
    # int(inf) raised OverflowError: a traceback instead of a line naming the key
    ("[als]\nfactors = inf\n", "als.factors: expected a whole number, got inf"),
    ("[als]\nfactors = nan\n", "als.factors: expected a whole number, got nan"),
    # numpy's RandomState takes 0 to 2^32 - 1: a traceback after the log was read
    ("[als]\nseed = -1\n", "als.seed: must be at least 0 and at most 4294967295, got -1"),
    ("[segments]\nseed = -1\n", "segments.seed: must be at least 0"),
    ("[bpr]\nseed = 4294967296\n", "bpr.seed: must be at least 0 and at most 4294967295"),
    # factors x factors matrices: a million factors asked numpy for 3.6 TiB
    ("[als]\nfactors = 1e30\n", "als.factors: must be at least 1 and at most 10000"),
    ("[bpr]\nfactors = 1000000\n", "bpr.factors: must be at least 1 and at most 10000"),
    # named after the log was read, as 'model: unknown model'
    ("default_recommender = 5\n", "default_recommender (--model): unknown model '5'"),
    ("default_recommender = \"eas\"\n", "default_recommender (--model): unknown model 'eas'"),
    ("[blend]\nfoo = 1.0\n", "blend.foo: not a model to blend"),
    ("[blend]\nblend = 1.0\n", "blend.blend: not a model to blend"),
])
def test_numbers_training_cannot_use_are_refused_naming_the_key(
    toml: str, named: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(toml)
    with pytest.raises(InvalidInput, match=re.escape(named)):
        load_train_config(config, environ={})
    events = tmp_path / "events.csv"
    events.write_text("user_id,item_id\nu1,i1\nu2,i1\nu1,i2\n")
    capsys.readouterr()
    argv = ["train", "--events", str(events), "--out", str(tmp_path / "b"), "--config", str(config)]
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith(f"recsvc train: error: {named}"), err
    assert not (tmp_path / "b").exists()


def test_a_config_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_bytes(b"\xff\xfe[\x00a\x00l\x00s\x00]\x00")  # UTF-16, as some editors save
    with pytest.raises(InvalidInput, match=r"^--config: .*c\.toml: not UTF-8 text"):
        load_train_config(config, environ={})


def test_serve_config_refuses_what_it_would_not_read(tmp_path: Path) -> None:
    from serving.config import load_serve_config

    config = tmp_path / "serve.toml"
    for text, named in [
        ("max_k = 5\n[serve]\nport = 1\n", "max_k: unknown setting in"),  # above the [serve] line
        ("[serve]\nport = 1\n[server]\nmax_k = 5\n", "server: unknown setting in"),
        ("[serve]\nport = inf\n", "serve.port: expected a whole number, got inf"),
        ("[serve]\nhot_users = 1e400\n", "serve.hot_users: expected a whole number, got inf"),
        ("[serve]\nworkers = 100000\n", "serve.workers: must be at least 1 and at most 1024"),
    ]:
        config.write_text(text)
        with pytest.raises(InvalidInput, match=re.escape(named)):
            load_serve_config(str(config), environ={})
    config.write_text("[serve]\nport = 1.0\nworkers = 2\n")
    loaded = load_serve_config(str(config), environ={})
    assert (loaded.port, loaded.workers) == (1, 2)


def test_the_config_accepts_the_models_training_builds() -> None:
    from recsvc.config import RECOMMENDERS
    from training.models import MODELS

    assert tuple(MODELS) == RECOMMENDERS


def test_a_recsvc_variable_nothing_reads_is_said_with_the_likely_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # RECSVC_TRAIN_ALS__FACTORS (one underscore after TRAIN) used to change nothing, silently
    for name in ("RECSVC_TRAIN_ALS__FACTORS", "RECSVC_SERVE_MAX_K", "RECSVC_TOKNE", "RECSVC_XYZ"):
        monkeypatch.setenv(name, "3")
    monkeypatch.setenv("RECSVC_TRAIN__ALS__FACTORS", "3")  # known forms are not named
    monkeypatch.setenv("RECSVC_LOG_LEVEL", "WARNING")
    capsys.readouterr()
    code = main(["synth", "--users", "20", "--items", "40", "--out", str(tmp_path / "s")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 0 and (tmp_path / "s").exists()  # a warning, not a refusal
    named = {line.split("$")[1].split(" ")[0]: line for line in err if "not a recsvc variable" in line}
    assert sorted(named) == ["RECSVC_SERVE_MAX_K", "RECSVC_TOKNE", "RECSVC_TRAIN_ALS__FACTORS",
                             "RECSVC_XYZ"], err
    assert "$RECSVC_TRAIN__SECTION__KEY" in named["RECSVC_TRAIN_ALS__FACTORS"]
    assert "$RECSVC_SERVE__KEY" in named["RECSVC_SERVE_MAX_K"]
    assert "did you mean $RECSVC_TOKEN?" in named["RECSVC_TOKNE"]
    assert "(" not in named["RECSVC_XYZ"]


def test_every_recsvc_variable_the_code_reads_is_known_to_the_typo_check() -> None:
    """unknown_environment's list must not drift from the code: a variable read somewhere but
    missing from ENV_VARIABLES would be reported as a typo on every command."""
    from recsvc.config import ENV_PREFIXES, ENV_VARIABLES

    root = Path(__file__).resolve().parents[1]
    named: set[str] = set()
    for package in ("recsvc", "serving", "training"):
        for path in (root / package).rglob("*.py"):
            named.update(re.findall(r"[\"'](RECSVC_[A-Z0-9_]+)[\"']", path.read_text("utf-8")))
    read = {n for n in named if not n.startswith(ENV_PREFIXES) and not n.endswith("_")}
    assert read and read <= set(ENV_VARIABLES), sorted(read - set(ENV_VARIABLES))
