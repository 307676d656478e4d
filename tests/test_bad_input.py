"""Bad input: random and malformed requests over a real gRPC channel, corrupt files to the loaders.

The server must answer a request correctly or with INVALID_ARGUMENT (NOT_FOUND for an unknown
item) naming the field, whatever the request holds, and keep serving. Request bytes that are
not a valid message at all (sent through a generic channel with identity serializers) get
INVALID_ARGUMENT too. The loaders, given corrupt files, give one clear error line from the CLI
(non-zero exit) or count the bad rows; never a traceback.
"""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pandas as pd
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsvc.cli import main
from recsvc.events import load_catalog, load_events
from recsvc.ids import IdMap
from recsvc.v1 import recommender_pb2 as pb
from recsvc.v1 import recommender_pb2_grpc as pb_grpc
from serving.server import RunningServer
from tests.fixtures_grpc import N_ITEMS, item_id, make_bundle, serve, user_id

ROOT = Path(__file__).resolve().parents[1]
MAX_K = 100
OK_CODES = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT}
FIELDS = ("user_id", "item_id", "item_ids", "k", "filter.", "segment", "category", "event_type",
          "timestamp_ms", "as_of_ms", "request:")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    bundle = make_bundle(tmp_path_factory.mktemp("bad-input-bundle"))
    running = serve(f"memory://bad-input-{id(bundle)}", bundle)
    try:
        yield running
    finally:
        running.stop(0)


@pytest.fixture(scope="module")
def channel(server: RunningServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.target, options=[("grpc.max_send_message_length", 8 << 20)]) as opened:
        yield opened


def still_serving(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    reply = pb_grpc.RecommenderStub(channel).Recommend(pb.RecommendRequest(user_id=user_id(1), k=3), timeout=5)
    assert [i.item_id for i in reply.items] == [item_id(12), item_id(13), item_id(14)]


def outcome(call: Any, request: Any) -> tuple[grpc.StatusCode, Any]:
    try:
        return grpc.StatusCode.OK, call(request, timeout=10)
    except grpc.RpcError as error:
        return error.code(), error


def check_answer(code: grpc.StatusCode, reply: Any, k: int, excluded: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    """A correct answer (at most k distinct items, none excluded) or a named INVALID_ARGUMENT."""
    if code is grpc.StatusCode.OK:
        got = [i.item_id for i in reply.items]
        assert len(got) <= k and len(set(got)) == len(got)
        assert not set(got) & excluded
        return
    assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), (code, reply.details())
    assert reply.details().startswith(FIELDS), reply.details()


# -- random requests ---------------------------------------------------------------------------
# Ids: empty, short, known, very long, control characters, any Unicode (no lone surrogates:
# protobuf cannot send them; invalid UTF-8 goes through the raw-bytes test below).
text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
ids = st.one_of(
    text,
    st.sampled_from([user_id(1), user_id(0), item_id(3), item_id(39), "", " ", "\x00", "a\nb"]),
    st.integers(257, 5000).map(lambda n: "x" * n),
)
k_values = st.one_of(st.integers(-(2**31), 2**31 - 1), st.integers(-2, MAX_K + 2))
prices = st.none() | st.floats(allow_nan=True, allow_infinity=True)


@st.composite
def filters(draw: st.DrawFn) -> pb.Filter | None:
    if draw(st.booleans()):
        return None
    flt = pb.Filter(
        categories=draw(st.lists(st.one_of(ids, st.sampled_from(["books", "music"])), max_size=5)),
        in_stock_only=draw(st.booleans()),
        exclude_item_ids=draw(st.lists(ids, max_size=5)),
        exclude_purchased=draw(st.booleans()),
    )
    low, high = draw(prices), draw(prices)
    if low is not None:
        flt.min_price = low
    if high is not None:
        flt.max_price = high
    return flt


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, Any]:
    rpc = draw(st.sampled_from(["Recommend", "SimilarItems", "CrossSell", "BuyAgain", "Popular", "RecordEvent"]))
    flt = draw(filters())
    extra: dict[str, Any] = {"filter": flt} if flt is not None else {}
    k = draw(k_values)
    if rpc == "Recommend":
        return rpc, pb.RecommendRequest(user_id=draw(ids), k=k, segment=draw(ids), **extra)
    if rpc == "SimilarItems":
        return rpc, pb.SimilarItemsRequest(item_id=draw(ids), k=k, user_id=draw(ids), **extra)
    if rpc == "CrossSell":
        cart = draw(st.one_of(st.lists(ids, max_size=8), st.integers(90, 3000).map(lambda n: [item_id(i % N_ITEMS) for i in range(n)])))
        return rpc, pb.CrossSellRequest(item_ids=cart, k=k, user_id=draw(ids), **extra)
    if rpc == "BuyAgain":
        as_of = draw(st.integers(-(2**63), 2**63 - 1))
        return rpc, pb.BuyAgainRequest(user_id=draw(ids), k=k, as_of_ms=as_of, **extra)
    if rpc == "Popular":
        return rpc, pb.PopularRequest(k=k, category=draw(ids), segment=draw(ids), trending=draw(st.booleans()),
                                      user_id=draw(ids), **extra)
    event = draw(st.integers(-(2**31), 2**31 - 1) | st.integers(-1, 5))  # unknown enum values too
    stamp = draw(st.integers(-(2**63), 2**63 - 1) | st.just(0))
    return rpc, pb.RecordEventRequest(user_id=draw(ids), item_id=draw(ids), event_type=event, timestamp_ms=stamp)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=requests())
def test_random_requests_get_an_answer_or_a_named_invalid_argument(channel: grpc.Channel, case: tuple[str, Any]) -> None:
    rpc, request = case
    code, reply = outcome(getattr(pb_grpc.RecommenderStub(channel), rpc), request)
    if rpc == "RecordEvent":
        assert code in OK_CODES, (code, reply.details() if code is not grpc.StatusCode.OK else "")
        if code is not grpc.StatusCode.OK:
            assert reply.details().startswith(FIELDS), reply.details()
        return
    excluded = set(request.filter.exclude_item_ids) if request.HasField("filter") else set()
    if rpc == "SimilarItems":
        excluded.add(request.item_id)
    if rpc == "CrossSell":
        excluded.update(request.item_ids)
    check_answer(code, reply, max(request.k, 0), excluded)


def test_server_keeps_serving_after_the_random_requests(channel: grpc.Channel) -> None:
    still_serving(channel)


# -- bytes that are not a valid message --------------------------------------------------------
METHODS = [m.name for m in pb.DESCRIPTOR.services_by_name["Recommender"].methods]
MALFORMED = [
    b"\xff",  # a field header with no field
    b"\x0a\x05ab",  # a string cut short
    b"\x0a\x02\xff\xfe\x10\x03",  # user_id / item_id with invalid UTF-8
    b"\x12\xff\xff\xff\xff\x0f",  # a length far beyond the message
    b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",  # a varint of 11 bytes
    bytes(range(256)),
]


@pytest.mark.parametrize("method", METHODS)
def test_raw_garbage_is_invalid_argument(channel: grpc.Channel, method: str) -> None:
    call = channel.unary_unary(f"/recsvc.v1.Recommender/{method}", request_serializer=None, response_deserializer=None)
    for payload in MALFORMED:
        code, error = outcome(call, payload)
        if code is grpc.StatusCode.OK:
            continue  # some byte strings happen to parse (e.g. as unknown fields)
        assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED), (method, payload, code)
        assert error.details().startswith(FIELDS) or method == "ForgetUser", error.details()
    still_serving(channel)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(METHODS), payload=st.binary(max_size=300))
def test_random_bytes_never_break_the_server(channel: grpc.Channel, method: str, payload: bytes) -> None:
    call = channel.unary_unary(f"/recsvc.v1.Recommender/{method}", request_serializer=None, response_deserializer=None)
    code, _ = outcome(call, payload)
    # ForgetUser is refused on a server without auth; everything else answers or names the field
    allowed = OK_CODES | {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED}
    assert code in allowed, (method, payload, code)


def test_wrong_wire_types_are_read_as_missing_fields(channel: grpc.Channel) -> None:
    call = channel.unary_unary("/recsvc.v1.Recommender/Recommend", request_serializer=None,
                               response_deserializer=pb.RecommendResponse.FromString)
    # user_id (field 1) sent as a varint, k (field 2) sent as a string: both unknown fields
    code, error = outcome(call, b"\x08\x05\x12\x01a")
    assert code is grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith("user_id:")
    # a valid request followed by fields of a newer schema: answered
    request = pb.RecommendRequest(user_id=user_id(1), k=3).SerializeToString() + b"\xa0\x06\x01"
    code, reply = outcome(call, request)
    assert code is grpc.StatusCode.OK and len(reply.items) == 3


def test_oversized_messages_are_refused_and_the_server_keeps_serving(channel: grpc.Channel) -> None:
    stub = pb_grpc.RecommenderStub(channel)
    code, error = outcome(stub.CrossSell, pb.CrossSellRequest(item_ids=["x" * 100] * 30_000, k=3))
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED  # over the 1 MiB message limit
    code, error = outcome(stub.Recommend, pb.RecommendRequest(user_id="u" * 500_000, k=3))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith("user_id:")
    still_serving(channel)


# -- corrupt files -----------------------------------------------------------------------------
def _good_frame() -> pd.DataFrame:
    return pd.DataFrame({
        "user_id": [f"u{i % 7}" for i in range(60)],
        "item_id": [f"i{i % 5}" for i in range(60)],
        "event_type": ["view", "cart", "purchase"] * 20,
        "timestamp": [1_700_000_000 + 60 * i for i in range(60)],
    })


def corrupt_files(root: Path) -> dict[str, Path]:
    """Files no loader can read as a whole (each must fail with one clear line)."""
    root.mkdir(parents=True, exist_ok=True)
    frame = _good_frame()
    good = root / "good.parquet"
    frame.to_parquet(good)
    data = good.read_bytes()
    files = {
        "truncated parquet": (root / "truncated.parquet", data[: len(data) // 2]),
        "parquet without its header": (root / "headless.parquet", data[100:]),
        "empty parquet": (root / "empty.parquet", b""),
        "binary garbage as CSV": (root / "garbage.csv", bytes((i * 37 + 11) % 256 for i in range(4000))),
        "UTF-16 CSV": (root / "utf16.csv", frame.to_csv(index=False).encode("utf-16")),
        "unbalanced quotes": (root / "quotes.csv", b'user_id,item_id\n"u1,a\nu2,b\n'),
        "truncated gzip": (root / "truncated.csv.gz", gzip.compress(frame.to_csv(index=False).encode())[:200]),
        "not really gzip": (root / "plain.csv.gz", frame.to_csv(index=False).encode()),
        "binary garbage as JSON Lines": (root / "garbage.jsonl", bytes((i * 53 + 7) % 256 for i in range(4000)).replace(b"\n", b" ")),
    }
    for path, content in files.values():
        path.write_bytes(content)
    (root / "directory.csv").mkdir(exist_ok=True)
    paths = {name: path for name, (path, _) in files.items()}
    paths["a directory"] = root / "directory.csv"
    return paths


CORRUPT = ["truncated parquet", "parquet without its header", "empty parquet", "binary garbage as CSV",
           "UTF-16 CSV", "unbalanced quotes", "truncated gzip", "not really gzip",
           "binary garbage as JSON Lines", "a directory"]


@pytest.mark.parametrize("case", CORRUPT)
def test_corrupt_files_give_one_clear_line(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = corrupt_files(tmp_path / "files")[case]
    for argv, flag in (
        (["train", "--events", str(path), "--out", str(tmp_path / "bundles")], "--events"),
        (["items", "update", "--store", "memory://bad", "--items", str(path)], "--items"),
    ):
        code = main(argv)  # the CLI entry point, in process: a traceback would fail the test
        err = capsys.readouterr().err.strip().splitlines()
        assert code != 0
        assert err and err[-1].startswith(f"recsvc {argv[0]}: error: "), err
        assert flag in err[-1] or "item_id" in err[-1] or "user_id" in err[-1], err[-1]
        assert err[-1].isprintable() and len(err[-1]) < 400, err[-1]


@pytest.mark.parametrize("case", ["truncated parquet", "UTF-16 CSV", "truncated gzip"])
def test_corrupt_files_through_the_real_command_line(case: str, tmp_path: Path) -> None:
    path = corrupt_files(tmp_path / "files")[case]
    done = subprocess.run(
        [sys.executable, "-m", "recsvc.cli", "train", "--events", str(path), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if "Warning" not in line and line.strip()]
    assert len(lines) == 1 and lines[0].startswith("recsvc train: error: --events: "), done.stderr
    assert "Traceback" not in done.stderr


def _one_error_line(capsys: pytest.CaptureFixture[str], command: str) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith(f"recsvc {command}: error: "), err
    return err[0]


def test_paths_the_system_refuses_are_one_line_naming_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = tmp_path / "events.csv"
    events.write_text("user_id,item_id\nu1,i1\nu2,i1\nu1,i2\n")
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    (tmp_path / "dir.toml").mkdir()
    cases = [  # (argv, flag named, reason)
        (["train", "--events", str(events), "--out", str(a_file / "bundles")], "--out", "Not a directory"),
        (["train", "--events", str(events), "--out", str(tmp_path / "b"), "--config",
          str(tmp_path / "dir.toml")], "--config", "Is a directory"),
    ]
    for argv, flag, reason in cases:
        assert main(argv) == 2
        line = _one_error_line(capsys, argv[0])
        assert f"error: {flag}: " in line and reason in line, line
    (tmp_path / "b").mkdir()
    assert main(["train", "--events", str(events), "--out", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    (tmp_path / "out.csv").mkdir()
    assert main(["recommend", "--bundle", str(tmp_path / "b"), "--out", str(tmp_path / "out.csv")]) == 2
    line = _one_error_line(capsys, "recommend")
    assert f"--out: {tmp_path / 'out.csv'}: Is a directory" in line
    assert not list(tmp_path.glob(".out.csv.partial"))  # nothing half-written left


def test_a_log_read_in_the_wrong_format_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "events.csv"
    path.write_text("user_id,item_id\nu1,i1\nu2,i2\n")
    assert main(["train", "--events", str(path), "--format", "jsonl", "--out", str(tmp_path / "b")]) == 2
    line = _one_error_line(capsys, "train")
    assert "holds no readable rows: 3 malformed lines (3 'malformed JSON line'), read as jsonl" in line


def test_a_zstd_log_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "events.csv.zst"
    path.write_bytes(b"\x28\xb5\x2f\xfd")
    assert main(["train", "--events", str(path), "--out", str(tmp_path / "b")]) == 2
    assert "--events: events.csv.zst: zstd compression is not supported" in _one_error_line(capsys, "train")


@pytest.mark.parametrize(("argv", "env", "named"), [
    (["--log-level", "bogus", "synth", "--out", "{tmp}/s"], {}, "--log-level: 'bogus'"),
    (["synth", "--out", "{tmp}/s"], {"RECSVC_LOG_LEVEL": "loud"}, "--log-level: 'loud'"),
    (["train", "--events", "{events}", "--out", "{tmp}/b"], {"RECSVC_TRAIN__ALS__FACTORS__X": "1"},
     "als.factors.x: 'als.factors' is a setting"),
    (["train", "--events", "{events}", "--out", "{tmp}/b", "--max-bad-rows", "nan"], {}, "--max-bad-rows"),
    (["eval", "--events", "{events}", "--seed", "-1"], {}, "--seed"),
    (["eval", "--events", "{events}", "--k", "99999999"], {}, "--k: must be between 1 and 1000"),
    (["synth", "--out", "{tmp}/s", "--start", "9999-12-31"], {}, "--start: the log must lie between"),
    (["serve", "--bundle", "{tmp}", "--insecure-no-auth", "--metrics-port", "70000"], {}, "--metrics-port"),
])
def test_out_of_range_flags_are_one_line(
    argv: list[str], env: dict[str, str], named: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    events = tmp_path / "events.csv"
    events.write_text("user_id,item_id\nu1,i1\n")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    argv = [a.format(tmp=tmp_path, events=events) for a in argv]
    command = next(a for a in argv if not a.startswith("-") and a != "bogus")
    assert main(argv) == 2
    assert named in _one_error_line(capsys, command)


def test_serve_settings_are_checked(tmp_path: Path) -> None:
    from recsvc.errors import InvalidInput
    from serving.config import load_serve_config

    typo = tmp_path / "serve.toml"
    typo.write_text("[serv]\nport = 1\n")
    with pytest.raises(InvalidInput, match=r"--config: .* has no \[serve\] table \(tables: \[serv\]\)"):
        load_serve_config(str(typo))
    for env, named in [
        ({"RECSVC_SERVE__POLL_SECONDS": "-1"}, "serve.poll_seconds: must be above 0"),
        ({"RECSVC_SERVE__STORE_TIMEOUT_MS": "nan"}, "serve.store_timeout_ms: must be a finite number"),
        ({"RECSVC_SERVE__HOT_USERS": "-5"}, "serve.hot_users: must be at least 0"),
        ({"RECSVC_SERVE__WARM_BATCH": "0"}, "serve.warm_batch: must be at least 1"),
        ({"RECSVC_SERVE__MAX_K": "3000000000"}, "serve.max_k: must be at least 1 and at most 10000"),
    ]:
        with pytest.raises(InvalidInput, match=re.escape(named)):
            load_serve_config(environ=env)
    flags = {"grace_seconds": "--grace", "rate_limit": "--rate-limit"}
    for overrides, named in [({"grace_seconds": float("nan")}, "--grace: must be a finite number"),
                             ({"rate_limit": -1.0}, "--rate-limit: must be at least 0")]:
        with pytest.raises(InvalidInput, match=re.escape(named)):
            load_serve_config(overrides=overrides, environ={}, flags=flags)


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from recsvc.synth import SynthConfig, generate, write

    root = tmp_path_factory.mktemp("small-bundle")
    write(generate(SynthConfig(users=100, items=60, days=30, seed=3, clusters=3)), root / "data")
    assert main(["train", "--events", str(root / "data" / "events.csv"), "--out", str(root / "b")]) == 0
    return (root / "b" / "latest").resolve()


def _damage(bundle: Path, case: str) -> None:
    def truncate(relative: str) -> None:
        path = bundle / relative
        path.write_bytes(path.read_bytes()[: max(len(path.read_bytes()) // 3, 10)])

    if case == "truncated array":
        truncate("recommenders/als/user_factors.npy")
    elif case == "truncated parquet":
        truncate("ids/users.parquet")
    elif case == "manifest a list":
        (bundle / "manifest.json").write_text("[1, 2]")
    elif case == "manifest not UTF-8":
        (bundle / "manifest.json").write_bytes(b"{\xff\xfe}")
    elif case == "broken kind.json":
        (bundle / "recommenders/itemknn/kind.json").write_text("{kind")
    elif case == "wrong csr shape":
        (bundle / "recommenders/itemknn/weights/shape.json").write_text('{"shape": [5, 5]}')
    elif case == "factors of another width":
        np.save(bundle / "recommenders/als/item_factors.npy", np.zeros((60, 3), dtype=np.float32))


@pytest.mark.parametrize("case", ["truncated array", "truncated parquet", "manifest a list",
                                  "manifest not UTF-8", "broken kind.json", "wrong csr shape",
                                  "factors of another width"])
def test_a_damaged_bundle_is_one_line(case: str, small_bundle: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(small_bundle, bundle)
    _damage(bundle, case)
    capsys.readouterr()
    model = "itemknn" if "kind" in case or "csr" in case else "als"
    code = main(["recommend", "--bundle", str(bundle), "--model", model, "--out", str(tmp_path / "r.csv")])
    line = _one_error_line(capsys, "recommend")
    assert code == 4 and ("corrupt" in line or "not a model bundle" in line), line


def test_a_forget_that_cannot_write_its_file_forgets_nothing(
    small_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from recsvc.bundle import Bundle
    from recsvc.store import open_store

    url = f"memory://forget-cli-{tmp_path.name}"
    assert main(["publish", "--bundle", str(small_bundle), "--store", url]) == 0
    bundle = Bundle(small_bundle)
    user = bundle.users.ids[0]
    (tmp_path / "list.txt").mkdir()
    capsys.readouterr()
    code = main(["forget", "--user", user, "--store", url, "--forget-file", str(tmp_path / "list.txt")])
    assert code == 2 and "--forget-file: " in _one_error_line(capsys, "forget")
    store = open_store(url)
    assert store.user_features(bundle.version, user) is not None and store.forgotten_users() == []
    assert main(["forget", "--user", "a\x01b", "--store", url]) == 2
    assert "--user: must be one printable user id" in _one_error_line(capsys, "forget")


def test_values_that_would_give_an_empty_or_silent_answer_are_refused(
    small_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from recsvc.bundle import Bundle

    item = Bundle(small_bundle).items.ids[0]
    events = tmp_path / "events.csv"
    events.write_text("user_id,item_id,event_type\nu1,i1,purchase\nu1,i2,purchase\n")
    tokens_dir = tmp_path / "tokens"
    tokens_dir.mkdir()
    cases = [
        (["recommend", "--bundle", str(small_bundle), "--category", "no-such-category",
          "--out", str(tmp_path / "r.csv")], "--category: no item of the bundle has category no-such-category"),
        (["crosssell", "--bundle", str(small_bundle), "--items", item, "--k", "0"], "--k: must be at least 1"),
        (["buyagain", "--bundle", str(small_bundle), "--user", "u000001", "--min-score", "nan"], "--min-score"),
        (["rules", "--events", str(events), "--purchase-types", "order", "--out", str(tmp_path / "rules.csv")],
         "--purchase-types: no row of the log has type order (its types: purchase)"),
        # settings are checked before the log is read (this one does not exist)
        (["rules", "--events", str(tmp_path / "missing.csv"), "--max-len", "1", "--out", str(tmp_path / "r.csv")],
         "--max-len: rules need itemsets of at least 2 items, got 1"),
        (["rules", "--events", str(events), "--min-support", "0", "--out", str(tmp_path / "r.csv")],
         "--min-support: must be in (0, 1], got 0.0"),
        (["serve", "--bundle", str(small_bundle), "--insecure-no-auth", "--port", "0", "--host",
          "no-such-host.invalid"], "--host: cannot listen on no-such-host.invalid:0"),
        (["serve", "--bundle", str(small_bundle), "--port", "0", "--tokens-file", str(tokens_dir)],
         "is not a file"),
    ]
    for argv, named in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        if argv[0] == "serve":  # the start-up banner and settings come first
            errors = [line for line in capsys.readouterr().err.splitlines() if "serve: error:" in line]
            assert len(errors) == 1 and named in errors[0], errors
        else:
            assert named in _one_error_line(capsys, argv[0])


@pytest.mark.parametrize("part", ["candidates/items", "similar/indices", "popularity/global/items"])
def test_a_bundle_with_item_indexes_outside_its_catalogue_is_not_published(
    part: str, small_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    from recsvc.store import open_store

    bundle = tmp_path / "bundle"
    shutil.copytree(small_bundle, bundle)
    values = np.load(bundle / f"{part}.npy")
    values.flat[0] = 10_000
    np.save(bundle / f"{part}.npy", values)
    url = f"memory://bad-indexes-{part.replace('/', '-')}"
    capsys.readouterr()
    assert main(["publish", "--bundle", str(bundle), "--store", url]) == 4
    errors = [line for line in capsys.readouterr().err.splitlines() if "publish: error: " in line]
    named = part.rsplit("/", 1)[0] if part.startswith("popularity") else part
    assert len(errors) == 1 and f"corrupt {named}: item indexes" in errors[0], errors
    assert open_store(url).version_table() == {}


def test_outputs_of_long_searches_are_checked_before_the_search(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = tmp_path / "events.csv"
    events.write_text("user_id,item_id\nu1,i1\n")
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    (tmp_path / "out.json").mkdir()
    for argv, named in [
        (["tune", "--events", str(events), "--out", str(tmp_path / "t.toml"), "--report",
          str(a_file / "r.json")], "--report: cannot make the directory"),
        (["tune", "--events", str(events), "--out", str(tmp_path)], "--out: "),
        (["eval", "--events", str(events), "--out", str(tmp_path / "out.json")], "--out: "),
    ]:
        capsys.readouterr()
        assert main(argv) == 2, argv
        assert named in _one_error_line(capsys, argv[0])


def test_a_boolean_is_no_number_in_a_config(tmp_path: Path) -> None:
    from recsvc.config import load_train_config
    from recsvc.errors import InvalidInput

    path = tmp_path / "c.toml"
    path.write_text("[als]\nfactors = true\n")
    with pytest.raises(InvalidInput, match="als.factors: expected a number, got True"):
        load_train_config(path)


def test_usage_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["train", "--events", "x.csv", "--out", "b", "--candidates", "many"])
    assert exited.value.code == 2
    line = _one_error_line(capsys, "train")
    assert "--candidates" in line and "'many'" in line and "recsvc train --help" in line


def test_a_bad_time_format_is_one_line_naming_the_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = tmp_path / "events.csv"
    events.write_text("user_id,item_id,timestamp\nu1,i1,12/1/2010 8:26\n")
    code = main(["train", "--events", str(events), "--out", str(tmp_path / "b"), "--time-format", "MM/dd/yyyy"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("recsvc train: error: --time-format: not a strftime format")


def test_bad_rows_are_counted_with_their_reasons(tmp_path: Path) -> None:
    jsonl = tmp_path / "mixed.jsonl"
    rows: list[Any] = [
        {"user_id": "u1", "item_id": "a", "event_type": "view", "timestamp": 1_700_000_000},
        {"user_id": 42, "item_id": "b", "event_type": "view", "timestamp": 1_700_000_001},  # numbers are ids too
        {"user_id": ["u", 2], "item_id": "c"},  # an array where an id belongs
        {"user_id": "u3", "item_id": {"sku": 1}},  # an object where an id belongs
        {"user_id": "u4", "item_id": "d", "timestamp": "yesterday"},
        {"user_id": "u5", "item_id": "e", "quantity": "lots", "timestamp": 1_700_000_002},
        {"user_id": "u6\x07", "item_id": "f"},  # a control character
        {"user_id": "u7", "item_id": "g", "event_type": {"kind": "view"}, "timestamp": 1_700_000_003},
        {"user_id": "u8", "item_id": "h"},  # no time in a log that has times
    ]
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken json\n[1, 2]\n", encoding="utf-8")
    log, report = load_events(jsonl)
    assert sorted(log.users.ids) == ["42", "u1"]
    assert dict(report.bad_rows) == {
        "user_id is a JSON object or array": 1,
        "item_id is a JSON object or array": 1,
        "unparsable timestamp": 1,
        "unparsable quantity": 1,
        "user_id has control characters": 1,
        "unparsable event_type": 1,
        "malformed JSON line": 1,
        "JSON line is not an object": 1,
        "missing timestamp": 1,
    }
    assert report.rows_read == 11 and report.rows_kept == 2

    latin = tmp_path / "latin1.csv"
    latin.write_bytes("user_id,item_id,event_type\nJos\xe9,a,view\nAnn,caf\xe9,view\nBo,b,view\n".encode("latin-1"))
    log, report = load_events(latin)
    assert list(log.users.ids) == ["Bo"]
    assert report.bad_rows["user_id is not valid UTF-8 (wrong file encoding?)"] == 1
    assert report.bad_rows["item_id is not valid UTF-8 (wrong file encoding?)"] == 1

    mixed = tmp_path / "mixed.csv"
    mixed.write_text("user_id,item_id,timestamp,quantity,price\n1,a,2024-01-01,1,2\nu,b,notatime,2,1\n,c,1,2,3\nu2,d,1.5e9,inf,1\nu3,e,1,1,-3\n")
    log, report = load_events(mixed)
    assert len(log) == 1 and report.rows_bad == 4

    items = tmp_path / "items.jsonl"
    items.write_text('{"item_id": "a", "price": 3}\n{"item_id": ["a"]}\nnot json\n{"item_id": "b", "price": "free"}\n')
    catalog_report = report.__class__()
    catalog = load_catalog(items, IdMap(["a", "b"]), catalog_report)
    assert catalog.price[0] == 3.0
    assert catalog_report.bad_rows == {
        "catalog: item_id is a JSON object or array": 1,
        "catalog: malformed JSON line": 1,
        "catalog: unparsable or negative price": 1,
    }


def test_mining_flags_with_a_bundle_are_refused_not_ignored(
    small_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`rules --bundle B --min-support 0.5` exported every rule of B, as if the flag were not
    there; a bundle's rules were mined when it was trained."""
    out = tmp_path / "rules.csv"
    for flags, named in [(["--min-support", "0.5"], "--min-support"), (["--max-len", "2"], "--max-len"),
                         (["--purchase-types", "order"], "--purchase-types"),
                         (["--columns", "item_id=sku"], "--columns")]:
        capsys.readouterr()
        assert main(["rules", "--bundle", str(small_bundle), "--out", str(out), *flags]) == 2
        assert f"error: {named}: applies to mining from --events" in _one_error_line(capsys, "rules")
        assert not out.exists()
    assert main(["rules", "--bundle", str(small_bundle), "--out", str(out)]) == 0
    events = tmp_path / "events.csv"
    events.write_text("user_id,item_id,event_type\nu1,i1,purchase\nu1,i2,purchase\n")
    for flags, named in [(["--window-days", "nan"], "--window-days: must be a positive number"),
                         (["--purchase-types", ","], "--purchase-types: name at least one event type")]:
        capsys.readouterr()
        assert main(["rules", "--events", str(events), "--out", str(out), *flags]) == 2
        assert named in _one_error_line(capsys, "rules")


@pytest.mark.parametrize("command", ["train", "eval", "tune"])
def test_the_configs_max_bad_rows_holds_for_eval_and_tune_as_for_train(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`[events] max_bad_rows` stopped `train` (exit 5) but `eval` and `tune` went on with the
    bad rows; and a typo in it was named --max-bad-rows, a flag nobody gave."""
    events = tmp_path / "events.csv"
    events.write_text("user_id,item_id\n" + "".join(f"u{u},i{(u * k) % 7}\n" for u in range(20)
                                                    for k in range(1, 5)) + ",i1\n")
    extra = {"train": ["--out", str(tmp_path / "b")], "eval": ["--models", "popular"],
             "tune": ["--models", "ease", "--trials", "1", "--out", str(tmp_path / "t.toml")]}[command]
    config = tmp_path / "c.toml"
    config.write_text('[events]\nmax_bad_rows = "0"\n')
    assert main([command, "--events", str(events), "--config", str(config), *extra]) == 5
    assert "1 of 81 rows are bad" in _one_error_line(capsys, command)
    config.write_text('[events]\nmax_bad_rows = "some"\n')
    assert main([command, "--events", str(events), "--config", str(config), *extra]) == 2
    assert "error: events.max_bad_rows: 'some' is not a number" in _one_error_line(capsys, command)


def test_tune_and_eval_flags_are_checked_before_the_log_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """tune's --trials, --search, --objective and --models were checked after the log was read
    (its summary came first on stderr, after minutes on a large log); eval took --seed and
    --seeds together and ignored --seed."""
    missing = str(tmp_path / "missing.csv")  # not read: the flags fail first
    out = str(tmp_path / "t.toml")
    for argv, named in [
        (["tune", "--trials", "0"], "--trials: must be at least 1, got 0"),
        (["tune", "--search", "grd"], "--search: 'grd' is not one of random, grid"),
        (["tune", "--objective", "ndgc"], "--objective: 'ndgc' is not one of"),
        (["tune", "--models", "ease,eas"], "--models: unknown model 'eas'"),
        (["eval", "--seed", "5", "--seeds", "1,2"], "--seed: give --seed or --seeds (1,2), not both"),
    ]:
        capsys.readouterr()
        tail = ["--out", out] if argv[0] == "tune" else []
        assert main([argv[0], "--events", missing, *argv[1:], *tail]) == 2, argv
        assert named in _one_error_line(capsys, argv[0])


def test_serve_with_a_missing_bundle_is_one_line(tmp_path: Path) -> None:
    """Checked before the settings line and the no-auth banner, which buried the error."""
    done = subprocess.run(
        [sys.executable, "-m", "recsvc.cli", "serve", "--bundle", str(tmp_path / "missing"),
         "--port", "0", "--insecure-no-auth"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 4
    assert done.stderr.splitlines() == [
        f"recsvc serve: error: {tmp_path / 'missing'}: not a model bundle (no manifest.json)"]


def test_a_failing_store_command_on_an_embedded_store_is_one_line(
    small_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The note that memory:// lives only in the process comes after a command that worked,
    not before an error (two lines)."""
    url = f"memory://one-line-{time.monotonic_ns()}"
    capsys.readouterr()
    assert main(["rollback", "--store", url]) == 3
    _one_error_line(capsys, "rollback")
    assert main(["publish", "--bundle", str(small_bundle), "--store", url]) == 0
    assert capsys.readouterr().err.splitlines()[-1].startswith(
        f"recsvc publish: note: {url} lives only in this process")
