"""Security end to end: tokens, rate limits, TLS and mutual TLS, hashed customer ids, ForgetUser,
and what the logs and metrics may contain. Real gRPC servers on 127.0.0.1, real redis-server.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from recsvc.bundle import Bundle
from recsvc.client import ClientSecurity
from recsvc.errors import InvalidInput
from recsvc.logs import KeyValueFormatter
from recsvc.privacy import IdHasher, resolve_forgotten
from recsvc.store import open_store
from recsvc.v1 import recommender_pb2 as pb
from recsvc.v1 import recommender_pb2_grpc as pb_grpc
from serving.auth import TokenRegistry, add_token, hash_token, parse_tokens, remove_token
from serving.ratelimit import RateLimiter
from serving.server import RunningServer
from tests.fixtures_grpc import bundle_dir, item_id, serve, user_id  # noqa: F401  (fixture)
from tests.fixtures_redis import free_port, redis_url, start_redis  # noqa: F401  (fixtures)
from tests.fixtures_tls import TlsFiles, tls_files  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[1]
SECRET = "test-id-secret-0123456789abcdef"


@pytest.fixture()
def tokens(tmp_path: Path) -> dict[str, Any]:
    """A tokens file with a client, an admin and a rate-limited client; the tokens themselves."""
    path = tmp_path / "tokens.txt"
    made = {
        "client": add_token(path, "storefront"),
        "admin": add_token(path, "privacy-desk", "admin"),
        "slow": add_token(path, "batch-job", rate=2),
    }
    return {"path": path, **made}


@pytest.fixture()
def auth_server(bundle_dir: Path, tokens: dict[str, Any]) -> Iterator[RunningServer]:  # noqa: F811
    running = serve(f"memory://sec-{uuid.uuid4().hex[:8]}", bundle_dir, tokens_file=str(tokens["path"]))
    try:
        yield running
    finally:
        running.stop(0)


def stub(target: str, token: str | None = None, **tls: Any) -> tuple[grpc.Channel, pb_grpc.RecommenderStub]:
    channel = ClientSecurity(token=token, **tls).channel(target)
    return channel, pb_grpc.RecommenderStub(channel)


def code_of(call: Any, request: Any, **kwargs: Any) -> grpc.StatusCode:
    try:
        call(request, timeout=5, **kwargs)
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


RECOMMEND = pb.RecommendRequest(user_id=user_id(1), k=3)


# -- authentication ------------------------------------------------------------------------------
def test_calls_need_a_valid_bearer_token(auth_server: RunningServer, tokens: dict[str, Any]) -> None:
    target = auth_server.target
    with grpc.insecure_channel(target) as channel:
        client = pb_grpc.RecommenderStub(channel)
        assert code_of(client.Recommend, RECOMMEND) == grpc.StatusCode.UNAUTHENTICATED
        for bad in ("Bearer rsv_not-a-real-token", "Basic " + tokens["client"], "Bearer", tokens["client"]):
            got = code_of(client.Recommend, RECOMMEND, metadata=(("authorization", bad),))
            assert got == grpc.StatusCode.UNAUTHENTICATED, bad
        # the health service stays open for load balancers
        check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert check.status == health_pb2.HealthCheckResponse.SERVING
        # reflection is not open
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        with pytest.raises(grpc.RpcError) as caught:
            next(iter(reflection.ServerReflectionInfo(iter([request]), timeout=5)))
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    for token in (tokens["client"], tokens["admin"]):
        channel, client = stub(target, token)
        with channel:
            assert len(client.Recommend(RECOMMEND, timeout=5).items) == 3
            assert client.GetModelInfo(pb.GetModelInfoRequest(), timeout=5).model_version
    # a revoked token stops working without a restart (the file is re-read within a second)
    assert remove_token(tokens["path"], "storefront")
    channel, client = stub(target, tokens["client"])
    with channel:
        deadline = time.monotonic() + 5
        while code_of(client.Recommend, RECOMMEND) != grpc.StatusCode.UNAUTHENTICATED:
            assert time.monotonic() < deadline, "revoked token still accepted"
            time.sleep(0.2)


def test_tokens_are_stored_only_as_hashes(tokens: dict[str, Any]) -> None:
    text = tokens["path"].read_text()
    for role in ("client", "admin", "slow"):
        assert tokens[role] not in text
        assert hash_token(tokens[role]) in text
    assert oct(tokens["path"].stat().st_mode & 0o777) == "0o600"
    registry = TokenRegistry(str(tokens["path"]), environ={})
    assert registry.authenticate(tokens["admin"]).name == "privacy-desk"  # type: ignore[union-attr]
    assert registry.authenticate(tokens["admin"] + "x") is None
    # the environment variable holds the same lines, separated by ';'
    env = {"RECSVC_TOKENS": f"ops admin {hash_token('rsv_abc')} ; shop client {hash_token('rsv_def')} rate=9"}
    from_env = TokenRegistry(None, environ=env)
    assert from_env.authenticate("rsv_def").rate == 9.0  # type: ignore[union-attr]
    with pytest.raises(InvalidInput, match="line 1"):
        parse_tokens("shop client rsv_plaintext_token", "tokens.txt")
    for misplaced in (f"rsv_secret_in_the_name_column_0123456789abcdefghijklmnopqrstuvwxyz!# client {hash_token('x')}",
                      f"shop rsv_secret_in_the_role_column {hash_token('x')}"):
        with pytest.raises(InvalidInput) as refused:  # never repeated into logs
            parse_tokens(misplaced.replace("#", ""), "tokens.txt")
        assert "rsv_secret" not in str(refused.value) and "line 1" in str(refused.value)
    with pytest.raises(InvalidInput, match="already has a token"):
        add_token(tokens["path"], "storefront")


def test_revoking_a_name_does_not_bring_back_its_token_from_the_environment(tmp_path: Path) -> None:
    """A client first configured in $RECSVC_TOKENS, then given a new token in the file (which
    wins): revoking it in the file used to put the environment's old token back in force."""
    path = tmp_path / "tokens.txt"
    new = add_token(path, "shop")
    old = "rsv_old-bootstrap-token"
    env = {"RECSVC_TOKENS": f"shop client {hash_token(old)}; ops admin {hash_token('rsv_ops')}"}
    registry = TokenRegistry(str(path), environ=env)
    assert registry.authenticate(old) is None and registry.authenticate(new) is not None
    assert remove_token(path, "shop")
    registry._next_check = 0.0  # as a second later
    assert registry.authenticate(new) is None
    assert registry.authenticate(old) is None
    assert registry.authenticate("rsv_ops") is not None  # the environment's other clients stay


def test_one_token_cannot_be_two_clients(tmp_path: Path) -> None:
    """A line copied to make an admin, its hash left unchanged: the storefront's token used to
    authenticate as the last matching client, here the admin."""
    shop, ops = f"shop client {hash_token('rsv_shop')}", f"ops admin {hash_token('rsv_shop')}"
    with pytest.raises(InvalidInput, match="line 2: the same hash as the line of 'shop'"):
        parse_tokens(f"{shop}\n{ops}\n", "tokens.txt")
    path = tmp_path / "tokens.txt"
    path.write_text(shop + "\n")
    registry = TokenRegistry(str(path), environ={"RECSVC_TOKENS": ops})
    assert registry.authenticate("rsv_shop") is None  # ambiguous: neither


def test_a_deleted_tokens_file_keeps_the_tokens_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tokens.txt"
    token = add_token(path, "shop")
    registry = TokenRegistry(str(path), environ={})
    path.unlink()
    with caplog.at_level("ERROR", logger="serving.auth"):
        for _ in range(2):
            registry._next_check = 0.0  # as a second later
            assert registry.authenticate(token) is not None
    assert [r.getMessage() for r in caplog.records].count(
        "tokens file gone; keeping the previous tokens (empty it to revoke every token)") == 1
    path.write_text("")  # emptied: every token revoked
    registry._next_check = 0.0
    assert registry.authenticate(token) is None


def test_a_tokens_file_written_by_hand(tmp_path: Path) -> None:
    """A Windows editor's byte-order mark and line ends, comments, blank lines, and a last line
    without a line break: the server reads it, and `token create` / `revoke` keep it whole."""
    path = tmp_path / "tokens.txt"
    path.write_bytes(
        b"\xef\xbb\xbfshop client " + hash_token("rsv_shop").encode() + b"\r\n\r\n"
        b"# the privacy desk\r\nops admin " + hash_token("rsv_ops").encode() + b"  # since May"
    )
    assert [(c.name, c.role) for c in TokenRegistry(str(path), environ={}).clients] == [
        ("shop", "client"), ("ops", "admin")]
    token = add_token(path, "batch", rate=5)  # appended on a line of its own
    registry = TokenRegistry(str(path), environ={})
    assert [c.name for c in registry.clients] == ["shop", "ops", "batch"]
    assert registry.authenticate(token).rate == 5.0  # type: ignore[union-attr]
    assert remove_token(path, "shop")  # the first line, behind the byte-order mark
    assert [c.name for c in TokenRegistry(str(path), environ={}).clients] == ["ops", "batch"]


def test_a_token_pasted_into_any_column_is_refused_and_never_quoted(tmp_path: Path) -> None:
    token = "rsv_" + "Zq3" * 14 + "x"
    for line in (f"{token} client {hash_token(token)}",  # would show in logs, metrics, `list`
                 f"shop client {hash_token(token)} {token}"):
        with pytest.raises(InvalidInput) as refused:
            parse_tokens(line, "tokens.txt")
        assert "line 1" in str(refused.value) and token[:8] not in str(refused.value)
    with pytest.raises(InvalidInput, match="--name"):
        add_token(tmp_path / "tokens.txt", token)


def test_a_revoke_keeps_the_files_mode_and_owner(tmp_path: Path) -> None:
    """`sudo recsvc token revoke` on the server user's file: a file the server could no longer
    read would leave the revoked token in force (it keeps the previous tokens)."""
    path = tmp_path / "tokens.txt"
    add_token(path, "shop")
    add_token(path, "gone")
    path.chmod(0o640)
    owner = (1000, 1000) if os.geteuid() == 0 else (os.getuid(), os.getgid())
    os.chown(path, *owner)
    assert remove_token(path, "gone")
    info = path.stat()
    assert (oct(info.st_mode & 0o777), info.st_uid, info.st_gid) == ("0o640", *owner)
    assert [c.name for c in parse_tokens(path.read_text(), str(path))] == ["shop"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokens.txt"]  # no temporary left


def test_a_broken_tokens_file_is_reported_once_and_reread_when_fixed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tokens.txt"
    old = add_token(path, "shop")
    registry = TokenRegistry(str(path), environ={})
    good = path.read_text()
    path.write_text(good + "half a line\n")
    with caplog.at_level("INFO", logger="serving.auth"):
        for _ in range(3):
            registry._next_check = 0.0  # as a second later
            assert registry.authenticate(old) is not None  # the previous tokens stay
        messages = [r.getMessage() for r in caplog.records]
        assert messages == ["tokens file unreadable; keeping the previous tokens"]
        path.write_text(good.replace("shop", "shop2"))
        registry._next_check = 0.0
        assert registry.authenticate(old).name == "shop2"  # type: ignore[union-attr]
    assert [r.getMessage() for r in caplog.records][-1] == "tokens file reloaded"


def test_forget_user_needs_an_admin_token(auth_server: RunningServer, tokens: dict[str, Any]) -> None:
    target, user = auth_server.target, user_id(4)
    request = pb.ForgetUserRequest(user_id=user)
    channel, client = stub(target, tokens["client"])
    with channel:
        assert client.Recommend(pb.RecommendRequest(user_id=user, k=3), timeout=5).source == pb.PERSONALIZED
        client.RecordEvent(pb.RecordEventRequest(user_id=user, item_id=item_id(30), event_type=pb.VIEW), timeout=5)
        assert code_of(client.ForgetUser, request) == grpc.StatusCode.PERMISSION_DENIED
        assert auth_server.store.recent_events(user)  # nothing was removed
    channel, admin = stub(target, tokens["admin"])
    with channel:
        assert admin.ForgetUser(request, timeout=5).versions == 1
        assert admin.ForgetUser(request, timeout=5).versions == 0  # idempotent
        assert code_of(admin.ForgetUser, pb.ForgetUserRequest(user_id="")) == grpc.StatusCode.INVALID_ARGUMENT
        # gone everywhere: the store's version, the real-time state, the process cache
        reply = admin.Recommend(pb.RecommendRequest(user_id=user, k=3), timeout=5)
        assert reply.source == pb.POPULAR
    store = auth_server.store
    assert store.user_features(store.current_version(), user, recent=5) is None
    assert store.recent_events(user) == []
    assert store.forgotten_users() == [user]


def test_insecure_mode_serves_everyone_but_refuses_admin_calls(bundle_dir: Path) -> None:  # noqa: F811
    running = serve(f"memory://open-{uuid.uuid4().hex[:8]}", bundle_dir)  # insecure_no_auth
    try:
        with grpc.insecure_channel(running.target) as channel:
            client = pb_grpc.RecommenderStub(channel)
            assert client.Recommend(RECOMMEND, timeout=5).items
            got = code_of(client.ForgetUser, pb.ForgetUserRequest(user_id=user_id(1)))
            assert got == grpc.StatusCode.PERMISSION_DENIED
    finally:
        running.stop(0)


# -- rate limits ---------------------------------------------------------------------------------
def test_rate_limit_per_client(auth_server: RunningServer, tokens: dict[str, Any]) -> None:
    target = auth_server.target
    channel, slow = stub(target, tokens["slow"])  # rate=2, bucket of 2
    with channel:
        codes = [code_of(slow.Popular, pb.PopularRequest(k=2)) for _ in range(12)]
        assert codes.count(grpc.StatusCode.OK) in (2, 3)  # the bucket, maybe one refill
        assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 9
        with pytest.raises(grpc.RpcError) as caught:
            slow.Popular(pb.PopularRequest(k=2), timeout=5)
        assert "batch-job" in str(caught.value.details()) and "requests/s" in str(caught.value.details())
        health = health_pb2_grpc.HealthStub(channel)  # never limited
        for _ in range(5):
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        # other clients have their own buckets
        other_channel, other = stub(target, tokens["client"])
        with other_channel:
            assert all(code_of(other.Popular, pb.PopularRequest(k=2)) == grpc.StatusCode.OK for _ in range(12))
        time.sleep(0.6)  # refills at 2/s
        assert code_of(slow.Popular, pb.PopularRequest(k=2)) == grpc.StatusCode.OK


def test_token_bucket() -> None:
    limiter = RateLimiter(default_rate=10, burst=5)
    assert [limiter.allow("a", now=0.0) for _ in range(6)] == [True] * 5 + [False]
    assert limiter.allow("b", now=0.0)  # separate bucket
    assert limiter.allow("a", now=0.1) and not limiter.allow("a", now=0.1)  # 10/s: one per 0.1 s
    assert all(limiter.allow("a", now=100.0) for _ in range(5))  # refilled to the burst, not more
    assert not limiter.allow("a", now=100.0)
    assert all(limiter.allow("c", rate=0, now=0.0) for _ in range(1000))  # rate 0: unlimited


def test_a_burst_below_one_call_still_lets_calls_through() -> None:
    """--rate-burst 0.5 used to make a bucket that never held a whole call: every call of
    every client refused, for ever."""
    limiter = RateLimiter(default_rate=10, burst=0.5)
    assert limiter.allow("a", now=0.0) and not limiter.allow("a", now=0.0)
    assert limiter.allow("a", now=0.1)  # 10/s
    slow = RateLimiter(default_rate=0.5)  # one call every 2 s, a bucket of one
    assert slow.allow("b", now=0.0) and not slow.allow("b", now=1.0) and slow.allow("b", now=2.0)


def test_a_call_that_read_the_clock_before_another_is_not_refused_a_token_it_has() -> None:
    """Concurrent calls read the clock, then wait for the bucket's lock, so a call may reach
    the bucket with an older time than the last one's: it must not take back what the bucket
    had earned since."""
    limiter = RateLimiter(default_rate=10, burst=2)
    assert limiter.allow("a", now=0.0) and limiter.allow("a", now=0.0)  # empty
    assert limiter.allow("a", now=0.25)  # refilled 2 (capped), took 1: one left
    assert limiter.allow("a", now=0.2)  # the one left, whatever the stale time says
    assert not limiter.allow("a", now=0.25)


# -- CLI ---------------------------------------------------------------------------------------
def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "recsvc.cli", *args],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


def test_cli_tokens_and_the_auth_default(tmp_path: Path, bundle_dir: Path) -> None:  # noqa: F811
    path = tmp_path / "tokens.txt"
    made = _cli("token", "create", "--name", "storefront", "--tokens-file", str(path))
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("rsv_") and len(made.stdout.splitlines()) == 1
    assert token not in path.read_text() and hash_token(token) in path.read_text()
    listed = _cli("token", "list", "--tokens-file", str(path))
    assert "storefront" in listed.stdout and token not in listed.stdout
    clash = _cli("token", "create", "--name", "storefront", "--tokens-file", str(path))
    assert clash.returncode == 2 and len(clash.stderr.strip().splitlines()) == 1
    # serving without tokens and without --insecure-no-auth is refused, in one line
    refused = _cli("serve", "--bundle", str(bundle_dir), "--port", "0", env={"RECSVC_TOKENS": ""})
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1].startswith("recsvc serve: error: --tokens-file:")
    # serve reads $RECSVC_TOKENS_FILE as `recsvc token` does (here a file without tokens)
    empty = tmp_path / "empty-tokens.txt"
    empty.write_text("")
    from_env = _cli("serve", "--bundle", str(bundle_dir), "--port", "0",
                    env={"RECSVC_TOKENS": "", "RECSVC_TOKENS_FILE": str(empty)})
    assert from_env.returncode == 2 and "empty-tokens.txt holds no tokens" in from_env.stderr
    bad_tls = _cli("serve", "--bundle", str(bundle_dir), "--port", "0", "--insecure-no-auth",
                   "--tls-cert", str(path))
    assert bad_tls.returncode == 2 and "--tls-key" in bad_tls.stderr.strip().splitlines()[-1]
    assert _cli("token", "revoke", "--name", "storefront", "--tokens-file", str(path)).returncode == 0
    assert _cli("token", "revoke", "--name", "storefront", "--tokens-file", str(path)).returncode == 3


# -- TLS -----------------------------------------------------------------------------------------
def _health(channel: grpc.Channel) -> grpc.StatusCode:
    try:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_tls_and_mutual_tls(bundle_dir: Path, tls_files: TlsFiles, tokens: dict[str, Any]) -> None:  # noqa: F811
    url = f"memory://tls-{uuid.uuid4().hex[:8]}"
    tls = serve(url, bundle_dir, tls_cert=str(tls_files.server_cert), tls_key=str(tls_files.server_key),
                tokens_file=str(tokens["path"]))
    try:
        channel, client = stub(tls.target, tokens["client"], tls_ca=str(tls_files.ca))
        with channel:
            assert len(client.Recommend(RECOMMEND, timeout=5).items) == 3
        with grpc.insecure_channel(tls.target) as plain:  # plaintext to a TLS port
            assert _health(plain) == grpc.StatusCode.UNAVAILABLE
        with ClientSecurity(tls_ca=str(tls_files.rogue_ca)).channel(tls.target) as wrong_ca:
            assert _health(wrong_ca) == grpc.StatusCode.UNAVAILABLE  # server not trusted
        from serving.demo_client import main as demo_client

        flags = ["--target", tls.target, "--token", tokens["client"], "--tls-ca", str(tls_files.ca)]
        assert demo_client([*flags, "--tls-server-name", "localhost"]) == 0  # on the certificate
        assert demo_client([*flags, "--tls-server-name", "shop.example"]) == 1  # not on it
    finally:
        tls.stop(0)

    mutual = serve(url, None, tls_cert=str(tls_files.server_cert), tls_key=str(tls_files.server_key),
                   tls_client_ca=str(tls_files.ca))
    try:
        with ClientSecurity(tls_ca=str(tls_files.ca)).channel(mutual.target) as no_cert:
            assert _health(no_cert) == grpc.StatusCode.UNAVAILABLE
        rogue = ClientSecurity(tls_ca=str(tls_files.ca), tls_cert=str(tls_files.rogue_client_cert),
                               tls_key=str(tls_files.rogue_client_key))
        with rogue.channel(mutual.target) as intruder:
            assert _health(intruder) == grpc.StatusCode.UNAVAILABLE
        good = ClientSecurity(tls_ca=str(tls_files.ca), tls_cert=str(tls_files.client_cert),
                              tls_key=str(tls_files.client_key))
        with good.channel(mutual.target) as channel:
            assert _health(channel) == grpc.StatusCode.OK
            assert pb_grpc.RecommenderStub(channel).Recommend(RECOMMEND, timeout=5).items
    finally:
        mutual.stop(0)


def test_unusable_tls_files_are_refused_naming_the_flag(
    tmp_path: Path, tls_files: TlsFiles  # noqa: F811
) -> None:
    """A key that is not the certificate's, files given the wrong way round, an encrypted key
    or a key as the client CA: one line naming the flag, before the port is bound (gRPC only
    failed to bind, and the error blamed --port)."""
    from cryptography.hazmat.primitives import serialization

    encrypted = tmp_path / "encrypted.key"
    key = serialization.load_pem_private_key(tls_files.server_key.read_bytes(), None)
    encrypted.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase")))
    cert, key_path, ca = str(tls_files.server_cert), str(tls_files.server_key), str(tls_files.ca)
    cases = [
        ((cert, str(tls_files.client_key), ""), "--tls-key", "not the private key"),
        ((key_path, cert, ""), "--tls-cert", "holds no certificate"),
        ((cert, str(encrypted), ""), "--tls-key", "encrypted"),
        ((cert, key_path, key_path), "--tls-client-ca", "holds no certificate"),
    ]
    for (tls_cert, tls_key, client_ca), flag, reason in cases:
        with pytest.raises(InvalidInput) as refused:
            serve(f"memory://badtls-{uuid.uuid4().hex[:6]}", None, tls_cert=tls_cert,
                  tls_key=tls_key, tls_client_ca=client_ca)
        assert refused.value.field == flag and reason in refused.value.reason, refused.value
    running = serve(f"memory://oktls-{uuid.uuid4().hex[:6]}", None, tls_cert=cert, tls_key=key_path,
                    tls_client_ca=ca)
    running.stop(0)


@pytest.mark.redis
def test_serving_from_a_tls_redis(tmp_path: Path, bundle_dir: Path, tls_files: TlsFiles) -> None:  # noqa: F811
    port = free_port()
    process = start_redis(
        tmp_path / "tls-redis", free_port(), "--tls-port", str(port),
        "--tls-cert-file", str(tls_files.server_cert), "--tls-key-file", str(tls_files.server_key),
        "--tls-ca-cert-file", str(tls_files.ca), "--tls-auth-clients", "no",
    )
    try:
        running = serve(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={tls_files.ca}", bundle_dir)
        try:
            channel, client = stub(running.target)
            with channel:
                reply = client.Recommend(RECOMMEND, timeout=5)
                assert reply.source == pb.PERSONALIZED and [i.item_id for i in reply.items] == [
                    item_id(12), item_id(13), item_id(14)]
        finally:
            running.stop(0)
    finally:
        process.terminate()
        process.wait(timeout=10)


# -- customer ids as keyed hashes ------------------------------------------------------------
@pytest.fixture(params=["memory", "redis"])
def hashed_url(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("RECSVC_ID_SECRET", SECRET)
    tag = uuid.uuid4().hex[:8]
    if request.param == "memory":
        return f"memory://hashed-{tag}?hash_ids=1"
    return f"{request.getfixturevalue('redis_url')}?prefix=h{tag}&hash_ids=1"


def _everything_stored(store: Any) -> bytes:
    """Every key, field and value the backend holds, as one byte string."""
    if hasattr(store, "client"):
        client = store.client
        parts: list[bytes] = []
        for key in client.scan_iter(match=f"{store.prefix}:*"):
            parts.append(key)
            kind = client.type(key)
            if kind == b"hash":
                for field, value in client.hgetall(key).items():
                    parts += [field, value]
            elif kind == b"list":
                parts += client.lrange(key, 0, -1)
            elif kind == b"string":
                parts.append(client.get(key))
        return b"\n".join(parts)
    data = store._data
    parts_m = [repr(data.events).encode(), repr(data.forgotten).encode()]
    for version in data.versions.values():
        parts_m += [u.encode() for u in version.users] + list(version.users.values())
    return b"\n".join(parts_m)


def test_hashed_ids_keep_customer_ids_out_of_the_store(hashed_url: str, bundle_dir: Path) -> None:  # noqa: F811
    store = open_store(hashed_url)
    bundle = Bundle(bundle_dir)
    store.publish(bundle, progress=False)
    version = store.current_version()
    store.record_event(user_id(2), "i5", "view")
    store.record_event("visitor-77", "i6", "cart")
    assert store.forget_user(user_id(3)) == 1
    # reads by id still work, in one round trip
    features = store.user_features(version, user_id(1), recent=5)
    assert features is not None and features.user_id == user_id(1) and len(features.candidates)
    assert [e.item_id for e in store.recent_events(user_id(2))] == ["i5"]
    assert store.user_features(version, "visitor-77", recent=5).recent[0].item_id == "i6"
    assert store.user_features(version, user_id(3)) is None
    # ... but no customer id is stored anywhere, in keys, fields or values
    dump = _everything_stored(store)
    for customer in [*(user_id(u) for u in range(20)), "visitor-77"]:
        assert customer.encode() not in dump, customer
    # the forget list holds tagged keys that the trainer resolves with the same secret
    (entry,) = store.forgotten_users()
    assert entry.startswith("hmac-sha256:") and user_id(3) not in entry
    assert store.is_forgotten([user_id(3), user_id(4)]) == [True, False]
    assert resolve_forgotten([entry], bundle.users.ids) == [user_id(3)]
    with pytest.raises(InvalidInput, match="another secret"):
        resolve_forgotten([entry], bundle.users.ids, IdHasher(b"some-other-secret-of-32-bytes!!"))
    # `recsvc forget` hashes the id the same way
    from recsvc.cli import main

    assert main(["forget", "--user", user_id(4), "--store", hashed_url]) == 0
    assert store.is_forgotten([user_id(4)]) == [True]
    assert store.user_features(version, user_id(4)) is None
    # a later publish honours the hashed forget list
    assert store.publish(bundle, progress=False).version == bundle.version  # already stored
    # a handle that does not hash cannot misread the version as "every customer unknown"
    plain = open_store(hashed_url.replace("hash_ids=1", "hash_ids=0"))
    if hashed_url.startswith("redis"):
        with pytest.raises(InvalidInput, match="hash_ids"):
            plain.item_catalog(version)
        # ... nor "forget" a customer it cannot find (it would report nothing held)
        with pytest.raises(InvalidInput, match="hash_ids"):
            plain.forget_user(user_id(5))
        assert store.user_features(version, user_id(5)) is not None
        assert store.is_forgotten([user_id(5)]) == [False]


def test_a_forget_with_hashing_on_removes_events_recorded_before_it_was_turned_on(
    hashed_url: str,
) -> None:
    """Real-time events recorded before `hash_ids` was turned on sit under the plain id (for up
    to a week): a forget must delete them too, not only the hashed-key lists."""
    plain = open_store(hashed_url.replace("hash_ids=1", "hash_ids=0"))
    hashed = open_store(hashed_url)
    plain.record_event("alice", "i1", "purchase")
    plain.record_event("alice", "i2", "view")
    hashed.record_event("alice", "i3", "view")
    assert [e.item_id for e in plain.recent_events("alice")] == ["i2", "i1"]
    hashed.forget_user("alice")
    assert plain.recent_events("alice") == [] and hashed.recent_events("alice") == []
    assert b"alice" not in _everything_stored(plain)


def test_a_forget_with_hashing_off_removes_events_recorded_while_it_was_on(
    hashed_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Hashing turned off again (the secret still set): events recorded while it was on sit
    under the hashed key for up to a week, and a forget must delete them too."""
    plain = open_store(hashed_url.replace("hash_ids=1", "hash_ids=0"))
    hashed = open_store(hashed_url)
    hashed.record_event("bob", "i1", "purchase")
    plain.record_event("bob", "i2", "view")
    assert [e.item_id for e in hashed.recent_events("bob")] == ["i1"]
    plain.forget_user("bob")
    assert plain.recent_events("bob") == [] and hashed.recent_events("bob") == []
    # the secret in the URL's id_secret_file, none in the environment: found the same way
    hashed.record_event("dave", "i1", "view")
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    monkeypatch.delenv("RECSVC_ID_SECRET")
    by_file = open_store(hashed_url.replace("hash_ids=1", f"hash_ids=0&id_secret_file={secret_file}"))
    by_file.forget_user("dave")
    assert hashed.recent_events("dave") == []
    # without a secret the hashed key cannot be found: the plain events still go
    plain.record_event("carol", "i2", "view")
    plain.forget_user("carol")
    assert plain.recent_events("carol") == []
    # a secret set but unusable is said, not raised: the plain-id part of the forget is done
    monkeypatch.setenv("RECSVC_ID_SECRET", "short")
    plain.record_event("erin", "i2", "view")
    with caplog.at_level(logging.WARNING, logger="recsvc.store.engine"):
        plain.forget_user("erin")
    assert plain.recent_events("erin") == []
    assert any("id secret is set but unusable" in r.getMessage() for r in caplog.records)


def test_a_forget_list_written_plain_is_honoured_by_a_hashing_publisher(
    bundle_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    from tests.fixtures_grpc import make_bundle

    monkeypatch.setenv("RECSVC_ID_SECRET", SECRET)
    name = f"switch-{uuid.uuid4().hex[:6]}"
    plain = open_store(f"memory://{name}")
    plain.publish(Bundle(bundle_dir), progress=False)
    assert plain.forget_user(user_id(3)) == 1  # a plain entry on the forget list
    # the operator turns hashing on; the next nightly bundle still has the customer
    hashed = open_store(f"memory://{name}?hash_ids=1")
    report = hashed.publish(Bundle(make_bundle(tmp_path, variant=1)), progress=False)
    assert report.n_users == 19
    assert hashed.user_features(report.version, user_id(3)) is None
    assert hashed.user_features(report.version, user_id(4)) is not None


def test_a_customer_id_that_starts_like_a_hashed_entry_is_forgotten_as_a_plain_id(
    bundle_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    """Shops choose their ids (user names, e-mails): forgetting one that starts with
    'hmac-sha256:' used to make every later publish, is_forgotten and training run fail
    (ValueError, or 'no secret is set' on a store that does not hash ids)."""
    from tests.fixtures_grpc import make_bundle
    from training.pipeline import read_forget_list

    monkeypatch.delenv("RECSVC_ID_SECRET", raising=False)
    monkeypatch.delenv("RECSVC_ID_SECRET_FILE", raising=False)
    store = open_store(f"memory://lookalike-{uuid.uuid4().hex[:6]}")
    store.publish(Bundle(bundle_dir), progress=False)
    odd = ["hmac-sha256:x", "hmac-sha256:shop:42", "hmac-sha256:0123abcd:short"]
    for customer in odd:
        assert store.forget_user(customer) == 0
    assert store.forget_user(user_id(3)) == 1
    assert store.is_forgotten([*odd, user_id(3), user_id(4)]) == [True] * 4 + [False]
    assert resolve_forgotten(store.forgotten_users(), ["bob", odd[1]]) == [odd[1]]
    assert read_forget_list(store.url) == {*odd, user_id(3)}
    report = store.publish(Bundle(make_bundle(tmp_path, variant=1)), progress=False)
    assert store.user_features(report.version, user_id(3)) is None
    assert store.user_features(report.version, user_id(4)) is not None


def test_hashed_store_without_a_secret_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RECSVC_ID_SECRET", raising=False)
    monkeypatch.delenv("RECSVC_ID_SECRET_FILE", raising=False)
    with pytest.raises(InvalidInput, match="RECSVC_ID_SECRET"):
        open_store("memory://x?hash_ids=1")
    monkeypatch.setenv("RECSVC_ID_SECRET", "short")
    with pytest.raises(InvalidInput, match="16 bytes"):
        open_store("memory://x?hash_ids=1")


def test_trainer_drops_customers_forgotten_in_a_hashed_store(monkeypatch: pytest.MonkeyPatch) -> None:
    from recsvc.events import LoadReport
    from training.pipeline import drop_users

    monkeypatch.setenv("RECSVC_ID_SECRET", SECRET)
    store = open_store(f"memory://trainer-{uuid.uuid4().hex[:6]}?hash_ids=1")
    store.forget_user("alice")
    import numpy as np

    from recsvc.events import EventLog
    from recsvc.ids import IdMap

    n = 4
    event_log = EventLog(
        users=IdMap(["alice", "bob"]), items=IdMap(["x"]), orders=IdMap(), event_types=["view"],
        user=np.array([0, 1, 0, 1], np.int32), item=np.zeros(n, np.int32), event=np.zeros(n, np.int16),
        timestamp=np.zeros(n, np.int64), order=np.full(n, -1, np.int32), quantity=np.ones(n, np.float32),
        price=np.full(n, np.nan, np.float32), rating=np.full(n, np.nan, np.float32),
    )
    kept = drop_users(event_log, store.forgotten_users(), LoadReport())
    assert list(kept.users.ids) == ["bob"] and len(kept) == 2
    # an engine that matches ids itself is stopped rather than silently keeping alice
    from training.pipeline import read_forget_list

    url = store.url
    assert read_forget_list(url, hashed_ok=True) == set(store.forgotten_users())
    with pytest.raises(InvalidInput, match="hashed"):
        read_forget_list(url)


@pytest.mark.redis
def test_forget_reaches_other_server_processes(redis_url: str, bundle_dir: Path, tokens: dict[str, Any]) -> None:  # noqa: F811
    url = f"{redis_url}?prefix=fw{uuid.uuid4().hex[:6]}"
    first = serve(url, bundle_dir, tokens_file=str(tokens["path"]))
    second = serve(url, None, tokens_file=str(tokens["path"]), forget_poll_seconds=0.2,
                   realtime_watch=True)
    user = user_id(6)
    try:
        channel, client = stub(second.target, tokens["client"])
        with channel:
            assert client.Recommend(pb.RecommendRequest(user_id=user, k=3), timeout=5).source == pb.PERSONALIZED
        assert second.service.user_cache.get(user) is not None
        watch = second.service.events_watch
        deadline = time.monotonic() + 10
        while not (watch is not None and watch.ready):
            assert time.monotonic() < deadline, "the event watch did not become ready"
            time.sleep(0.02)
            watch = second.service.events_watch
        first.store.record_event(user, item_id(2), "view")
        while watch.quiet(user):  # the watch has the customer's key among the live ones
            assert time.monotonic() < deadline, "the event did not reach the watch"
            time.sleep(0.02)
        channel, admin = stub(first.target, tokens["admin"])
        with channel:
            admin.ForgetUser(pb.ForgetUserRequest(user_id=user), timeout=5)
        deadline = time.monotonic() + 5
        while second.service.user_cache.get(user) is not None:
            assert time.monotonic() < deadline, "the other server still caches the forgotten user"
            time.sleep(0.05)
        assert watch.quiet(user)  # and no longer holds their key
    finally:
        first.stop(0)
        second.stop(0)


def test_the_forget_watcher_survives_an_unexpected_error(
    bundle_dir: Path, caplog: pytest.LogCaptureFixture  # noqa: F811
) -> None:
    """One unexpected error from the store (a reply redis-py does not map to a connection
    error, a malformed entry) used to end the watcher's thread: customers forgotten through
    other processes then stayed in this one's cache for up to hot_user_ttl_seconds."""
    from serving.config import ServeConfig
    from serving.domain import RecommendationService, RecommendQuery
    from serving.privacy import ForgetWatcher

    url = f"memory://watcher{uuid.uuid4().hex[:6]}"
    store = open_store(url)
    store.publish(Bundle(bundle_dir), progress=False)
    service = RecommendationService(store, ServeConfig(warm_users=False, realtime_watch=False))
    service.start()
    user = user_id(2)
    service.recommend(RecommendQuery(user, 3))
    assert service.user_cache.get(user) is not None
    real_read, polls = store.forgotten_users, [0]

    def flaky_read() -> list[str]:
        polls[0] += 1
        if polls[0] == 2:
            raise RuntimeError(f"unexpected reply about {user}")
        return real_read()

    store.forgotten_users = flaky_read  # type: ignore[method-assign]
    watcher = ForgetWatcher(service, 0.02)
    watcher.poll()
    caplog.set_level(logging.ERROR, logger="serving.privacy")
    try:
        watcher.start()
        deadline = time.monotonic() + 10
        while polls[0] < 3:
            assert time.monotonic() < deadline, "the watcher stopped polling after the error"
            time.sleep(0.01)
        open_store(url).forget_user(user)  # another server process
        while service.user_cache.get(user) is not None:
            assert time.monotonic() < deadline, "the forgotten customer is still cached"
            time.sleep(0.01)
    finally:
        watcher.stop()
        service.stop()
    assert [r.getMessage() for r in caplog.records] == ["forget list poll failed"]
    assert not any(user in KeyValueFormatter().format(r) for r in caplog.records)


def test_a_forget_poll_that_failed_midway_is_done_again(bundle_dir: Path) -> None:  # noqa: F811
    from serving.config import ServeConfig
    from serving.domain import RecommendationService, RecommendQuery
    from serving.privacy import ForgetWatcher

    store = open_store(f"memory://midway{uuid.uuid4().hex[:6]}")
    store.publish(Bundle(bundle_dir), progress=False)
    service = RecommendationService(store, ServeConfig(warm_users=False, realtime_watch=False))
    service.start()
    try:
        watcher = ForgetWatcher(service, 5.0)
        watcher.poll()
        user = user_id(2)
        service.recommend(RecommendQuery(user, 3))
        store.forget_user(user)
        real_drop = service.drop_user

        def failing_drop(_user: str) -> None:
            raise RuntimeError("interrupted")

        service.drop_user = failing_drop  # type: ignore[method-assign]
        with pytest.raises(RuntimeError):
            watcher.poll()
        service.drop_user = real_drop  # type: ignore[method-assign]
        assert watcher.poll() == 1 and service.user_cache.get(user) is None
    finally:
        service.stop()


def test_a_read_racing_a_forget_does_not_cache_the_forgotten_customer(bundle_dir: Path) -> None:  # noqa: F811
    """A Recommend reads the customer; ForgetUser lands while the read is on the wire; the
    read's answer must not re-cache them (for up to hot_user_ttl). A real store cannot pause
    mid-read on demand, so the read waits on an event here."""
    import threading

    from serving.config import ServeConfig
    from serving.domain import RecommendationService, RecommendQuery

    store = open_store(f"memory://race{uuid.uuid4().hex[:6]}")
    store.publish(Bundle(bundle_dir), progress=False)
    service = RecommendationService(store, ServeConfig(warm_users=False, realtime_watch=False))
    service.start()
    reading, forgotten = threading.Event(), threading.Event()
    real_read = store.user_features

    def paused_read(*args: Any, **kwargs: Any) -> Any:
        features = real_read(*args, **kwargs)
        reading.set()
        assert forgotten.wait(5)
        return features

    store.user_features = paused_read  # type: ignore[method-assign]
    user = user_id(3)
    try:
        request = threading.Thread(target=service.recommend, args=(RecommendQuery(user, 3),))
        request.start()
        assert reading.wait(5)
        store.forget_user(user)
        service.drop_user(user)  # what ForgetUser does after the store
        forgotten.set()
        request.join(5)
        assert service.user_cache.get(user) is None
        store.user_features = real_read  # type: ignore[method-assign]
        service.recommend(RecommendQuery(user_id(4), 3))  # without a forget, reads are cached
        assert service.user_cache.get(user_id(4)) is not None
    finally:
        forgotten.set()
        service.stop()


# -- what logs and metrics may hold --------------------------------------------------------------
@pytest.mark.redis
def test_logs_and_metrics_never_hold_customer_ids_or_tokens(
    tmp_path: Path, bundle_dir: Path, tokens: dict[str, Any],  # noqa: F811
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str],
) -> None:
    from prometheus_client import REGISTRY, generate_latest

    port = free_port()
    process = start_redis(tmp_path / "redis", port)
    secret_shopper = "shopper-7f3a91c2"  # unknown to the model
    known = user_id(5)
    bogus = "rsv_bogus-token-4c2d9e"
    caplog.set_level(logging.DEBUG)
    running = serve(f"redis://127.0.0.1:{port}/0", bundle_dir, tokens_file=str(tokens["path"]))
    try:
        channel, client = stub(running.target, tokens["client"])
        admin_channel, admin = stub(running.target, tokens["admin"])
        slow_channel, slow = stub(running.target, tokens["slow"])
        with channel, admin_channel, slow_channel:
            flt = pb.Filter(exclude_purchased=True)
            for user in (known, secret_shopper):
                client.Recommend(pb.RecommendRequest(user_id=user, k=5), timeout=5)
                client.RecordEvent(pb.RecordEventRequest(user_id=user, item_id=item_id(3), event_type=pb.PURCHASE), timeout=5)
                client.BuyAgain(pb.BuyAgainRequest(user_id=user, k=3), timeout=5)
                client.Popular(pb.PopularRequest(k=3, user_id=user, filter=flt), timeout=5)
                client.CrossSell(pb.CrossSellRequest(item_ids=[item_id(0)], k=3, user_id=user, filter=flt), timeout=5)
                client.SimilarItems(pb.SimilarItemsRequest(item_id=item_id(4), k=3, user_id=user, filter=flt), timeout=5)
                # errors: bad requests, unknown items, wrong tokens, rate limits, non-admin forget
                code_of(client.Recommend, pb.RecommendRequest(user_id=user, k=0))
                code_of(client.Recommend, pb.RecommendRequest(user_id=user + "\x00", k=3))
                code_of(client.SimilarItems, pb.SimilarItemsRequest(item_id=user, k=3))
                code_of(client.ForgetUser, pb.ForgetUserRequest(user_id=user))
                code_of(client.Recommend, pb.RecommendRequest(user_id=user, k=3),
                        metadata=(("authorization", f"Bearer {bogus}"),))
                for _ in range(4):
                    code_of(slow.Recommend, pb.RecommendRequest(user_id=user, k=3))
            # the store hangs: fallbacks, a failed event, a failed forget
            os.kill(process.pid, signal.SIGSTOP)
            try:
                for user in (known, secret_shopper):
                    client.Recommend(pb.RecommendRequest(user_id=user, k=5), timeout=2)
                    code_of(client.RecordEvent, pb.RecordEventRequest(user_id=user, item_id=item_id(3), event_type=pb.VIEW))
                    code_of(admin.ForgetUser, pb.ForgetUserRequest(user_id=user))
            finally:
                os.kill(process.pid, signal.SIGCONT)
            time.sleep(0.4)  # the breaker's retry_after
            # a bug whose exception message quotes the customer id
            original = running.service.recommend

            def broken(query: Any, deadline: Any = None) -> Any:
                raise KeyError(f"no entry for {query.user_id}")

            running.service.recommend = broken  # type: ignore[method-assign]
            assert code_of(client.Recommend, pb.RecommendRequest(user_id=secret_shopper, k=3)) == grpc.StatusCode.INTERNAL
            running.service.recommend = original  # type: ignore[method-assign]
            admin.ForgetUser(pb.ForgetUserRequest(user_id=secret_shopper), timeout=5)
    finally:
        running.stop(0)
        process.terminate()
        process.wait(timeout=10)
    formatter = KeyValueFormatter()
    logged = "\n".join(formatter.format(record) for record in caplog.records)
    assert "unexpected error" in logged and "call refused" in logged  # the cycle did log
    text = logged + capfd.readouterr().err + generate_latest(REGISTRY).decode()
    for secret in (secret_shopper, known, bogus, tokens["client"], tokens["admin"], tokens["slow"]):
        leaks = [line for line in text.splitlines() if secret in line]
        assert not leaks, leaks[:5]


def test_background_errors_log_their_type_and_place_but_not_their_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The model poller and the user-cache warm-up log an unexpected error as its type and
    frames, not its message (which may quote a customer id), as docs/security.md promises."""
    from types import SimpleNamespace

    from serving.model import ModelTracker
    from serving.warmup import UserWarmer

    def fail(*_: Any) -> Any:
        raise KeyError("customer-4711")

    tracker = ModelTracker(store=None, guard=None, poll_seconds=0.01)  # type: ignore[arg-type]
    tracker.refresh = fail  # type: ignore[method-assign]
    warmer = UserWarmer(service=None, batch=10, cpu_share=0.5)  # type: ignore[arg-type]
    warmer._warm = fail  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO):
        tracker.start()
        warmer.model_loaded(SimpleNamespace(version="v1"))  # type: ignore[arg-type]
        deadline = time.monotonic() + 10
        while not {"model refresh failed", "user cache warm-up failed"} <= {
                r.getMessage() for r in caplog.records}:
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.01)
        tracker.stop()
        warmer.stop()
    failures = [r for r in caplog.records if r.getMessage().endswith("failed")]
    assert failures and all(getattr(r, "error", None) == "KeyError" for r in failures)
    assert all("test_security.py" in getattr(r, "at", "") for r in failures)
    assert all(r.exc_info is None for r in failures)
    assert "customer-4711" not in caplog.text


def test_a_revoke_handles_several_clients_on_one_line(tmp_path: Path) -> None:
    """Entries may share a line (`;`, as in $RECSVC_TOKENS): a revoke drops its client's entry
    only, and finds a client that is not first on its line."""
    path = tmp_path / "tokens.txt"
    a, b, c = (add_token(tmp_path / f"{n}.txt", n) for n in "abc")
    hashes = {n: hash_token(t) for n, t in zip("abc", (a, b, c), strict=True)}
    path.write_text(f"a client {hashes['a']}; b client {hashes['b']}  # shop\n"
                    f"c admin {hashes['c']}\n", encoding="utf-8")
    assert remove_token(path, "b")
    registry = TokenRegistry(str(path), environ={})
    assert registry.authenticate(b) is None
    assert registry.authenticate(a) is not None and registry.authenticate(c) is not None
    assert path.read_text().splitlines()[0] == f"a client {hashes['a']} # shop"
    assert remove_token(path, "a") and not remove_token(path, "a")
    assert [x.name for x in parse_tokens(path.read_text(), str(path))] == ["c"]
