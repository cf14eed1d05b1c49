"""Who may send: the producers file read and checked, source prefixes, and client addresses behind proxies."""

from __future__ import annotations

import hashlib

import orjson
import pytest

from worker.domain.producers import ProducersFileError, parse_producers
from worker.http.limits import client_address, parse_networks

DIGEST = hashlib.sha256(b"token-1").hexdigest()


def test_a_producer_is_found_by_its_token_and_sends_its_own_sources():
    producers = parse_producers(
        orjson.dumps(
            [{"name": "shop", "token_sha256": DIGEST.upper(), "sources": ["/shop/", "https://shop.example/"]}]
        )
    )
    shop = producers.find("token-1")
    assert shop is not None
    assert shop.name == "shop"
    assert producers.find("token-2") is None
    assert shop.may_send("/shop/orders")
    assert shop.may_send("https://shop.example/x")
    assert not shop.may_send("/shopping")
    assert not shop.may_send("/billing/shop/")
    assert not shop.may_send(None)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{", "not JSON"),
        ("{}", "must be a JSON array of producers"),
        ("[1]", "entry 0: must be an object"),
        ('[{"name": "a"}]', "entry 0: missing sources, token_sha256"),
        (
            f'[{{"name": "a", "token_sha256": "{DIGEST}", "sources": ["/a"], "token": "x"}}]',
            "unknown key(s) token",
        ),
        (f'[{{"name": "a b", "token_sha256": "{DIGEST}", "sources": ["/a"]}}]', "entry 0: name must be"),
        ('[{"name": "a", "token_sha256": "plain-token", "sources": ["/a"]}]', "never the token"),
        (f'[{{"name": "a", "token_sha256": "{DIGEST}", "sources": []}}]', "sources must be a non-empty list"),
        (
            f'[{{"name": "a", "token_sha256": "{DIGEST}", "sources": [""]}}]',
            "sources must be a non-empty list",
        ),
        (
            f'[{{"name": "a", "token_sha256": "{DIGEST}", "sources": ["/a"]}},'
            f' {{"name": "a", "token_sha256": "{"0" * 64}", "sources": ["/b"]}}]',
            "producer 'a' is listed twice",
        ),
        (
            f'[{{"name": "a", "token_sha256": "{DIGEST}", "sources": ["/a"]}},'
            f' {{"name": "b", "token_sha256": "{DIGEST}", "sources": ["/b"]}}]',
            "producers 'a' and 'b' share a token",
        ),
    ],
)
def test_a_bad_producers_file_names_its_problem(text, problem):
    with pytest.raises(ProducersFileError) as caught:
        parse_producers(text)
    assert problem in str(caught.value)
    assert "plain-token" not in str(caught.value)


TRUSTED = parse_networks(["10.0.0.0/8", "127.0.0.1", "::1"])


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("203.0.113.7", [], "203.0.113.7"),
        ("203.0.113.7", ["198.51.100.1"], "203.0.113.7"),  # not a proxy: its header is ignored
        ("10.1.2.3", ["198.51.100.1"], "198.51.100.1"),
        ("10.1.2.3", ["1.1.1.1, 198.51.100.1"], "198.51.100.1"),  # the rightmost hop the proxy saw
        ("10.1.2.3", ["1.1.1.1, 10.9.9.9"], "1.1.1.1"),  # two trusted proxies in a row
        ("10.1.2.3", ["1.1.1.1", "10.9.9.9"], "1.1.1.1"),  # the header given twice
        ("10.1.2.3", ["10.9.9.9"], "10.9.9.9"),  # only proxies: the farthest one
        ("10.1.2.3", ["not-an-address"], "10.1.2.3"),  # garbage: the proxy that passed it on
        ("::1", ["2001:db8::5"], "2001:db8::5"),
        (None, ["1.1.1.1"], "unknown"),
    ],
)
def test_forwarded_for_is_believed_only_from_trusted_proxies(peer, forwarded, client):
    assert client_address(peer, forwarded, TRUSTED) == client


def test_with_no_trusted_proxy_the_header_is_ignored():
    assert client_address("127.0.0.1", ["1.2.3.4"], ()) == "127.0.0.1"
