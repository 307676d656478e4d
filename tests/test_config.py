"""Config validation: a setting training cannot use is refused when the config is loaded,
naming the setting, not after the models are fitted."""

from __future__ import annotations

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
