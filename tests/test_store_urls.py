"""Store URLs: passwords never shown, whatever characters they hold; TLS settings only on TLS."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsvc.errors import InvalidInput, RecsvcError, StoreUnavailable
from recsvc.store import mask_url, open_store
from tests.fixtures_redis import free_port, start_redis

# printable passwords, with the characters a URL reserves (and an '@' of their own) planted
passwords = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=4, max_size=24).map(
    lambda text: text[:2] + "/#?@:"[len(text) % 5] + text[2:]
)


@settings(max_examples=300, deadline=None)
@given(passwords, st.sampled_from(["redis", "rediss", "redis+cluster"]), st.booleans())
def test_a_password_is_never_shown_whatever_it_holds(password: str, scheme: str, user: bool) -> None:
    url = f"{scheme}://{'default' if user else ''}:{password}@127.0.0.1:1/0"
    assert password not in mask_url(url)
    assert "***" in mask_url(url)

    def refusal(url: str) -> str:  # refused (reserved characters) or unreachable
        try:
            open_store(url, socket_timeout=0.2, retries=0).close()
        except RecsvcError as refused:
            return str(refused)
        raise AssertionError("nothing listens on port 1")

    text = refusal(url)
    assert password not in text
    # nor a piece of it: the error reads the same for any password of that shape (every
    # letter and digit replaced, the punctuation a URL parser reacts to kept), so nothing in
    # it comes from the password (a piece such as 'stor' may well be a word of the message)
    other = "".join(("Q" if c != "Q" else "R") if c.isalnum() else c for c in password)
    assert text == refusal(url.replace(f":{password}@", f":{other}@", 1)), text


def test_a_password_with_reserved_characters_names_the_fix_and_nothing_of_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    url = "redis://:Zm9v/YmFyc2VjcmV0@127.0.0.1:1/0"
    assert mask_url(url) == "redis://:***@127.0.0.1:1/0"
    with pytest.raises(InvalidInput) as refused:
        open_store(url)
    message = str(refused.value)
    assert "percent-encode" in message and "%2F" in message
    assert "Zm9v" not in message and "YmFy" not in message
    assert "Zm9v" not in caplog.text and "YmFy" not in caplog.text
    for url in ("redis://:pa?ss@127.0.0.1:1/0", "redis://:pa#ss@127.0.0.1:1/0",
                "redis://:a@b/cdef@127.0.0.1:1/0"):
        with pytest.raises(InvalidInput, match="percent-encode") as refused:
            open_store(url)
        assert "ss@" not in str(refused.value) and "cdef" not in str(refused.value)
        assert "pa" not in mask_url(url) and "cdef" not in mask_url(url)


def test_a_percent_encoded_password_with_reserved_characters_connects(tmp_path: Path) -> None:
    secret = f"a/b#c?d@e:{uuid.uuid4().hex[:6]}"
    port = free_port()
    process = start_redis(tmp_path / "auth", port, "--requirepass", secret)
    try:
        store = open_store(f"redis://:{quote(secret, safe='')}@127.0.0.1:{port}/0")
        store.ping()
        assert secret not in store.url and quote(secret, safe="") not in store.url
        store.close()
    finally:
        process.terminate()
        process.wait()


@pytest.mark.parametrize("scheme", ["redis", "redis+cluster"])
def test_tls_settings_on_a_plaintext_url_are_refused(scheme: str) -> None:
    # plaintext would otherwise go out with the settings silently ignored
    url = f"{scheme}://127.0.0.1:{free_port()}/0?ssl_ca_certs=/etc/ca.pem&ssl_cert_reqs=required"
    with pytest.raises(InvalidInput, match=r"ssl_ca_certs.*rediss") as refused:
        open_store(url, socket_timeout=0.2)
    assert f"{scheme}://" in str(refused.value)
    with pytest.raises(InvalidInput, match="rediss"):
        open_store(f"{scheme}://127.0.0.1:1/0", ssl_certfile="/etc/client.pem")
    with pytest.raises(StoreUnavailable, match="cannot reach"):  # a TLS URL takes them
        open_store(f"rediss://127.0.0.1:{free_port()}/0?ssl_cert_reqs=required", socket_timeout=0.2)
