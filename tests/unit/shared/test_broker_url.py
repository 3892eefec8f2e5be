"""BrokerUrl: round trips through text, scheme defaults, and a clear error for each bad URL."""

from __future__ import annotations

import dataclasses
import ipaddress
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgefleet.shared.broker_url import BrokerUrl
from edgefleet.shared.errors import BrokerUrlError, EdgefleetError

_LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
_HOST_NAMES = st.lists(_LABEL, min_size=1, max_size=4).map(".".join)
_IPV4 = st.ip_addresses(v=4).map(str)
_IPV6 = st.ip_addresses(v=6).map(lambda a: ipaddress.IPv6Address(int(a)).compressed)
_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1)

urls = st.builds(
    BrokerUrl,
    scheme=st.sampled_from(["mqtt", "mqtts"]),
    host=st.one_of(_HOST_NAMES, _IPV4, _IPV6),
    port=st.integers(1, 65535),
    username=st.none() | _TEXT,
    password=st.none() | _TEXT,
)


@given(urls)
def test_str_round_trips_without_the_password(url: BrokerUrl):
    assert BrokerUrl.parse(str(url)) == dataclasses.replace(url, password=None)
    assert "password" not in repr(url)


@given(urls.filter(lambda u: u.username is not None and u.password is not None))
def test_percent_encoded_credentials_round_trip(url: BrokerUrl):
    host = str(url).rsplit("@", 1)[1]
    user, password = quote(url.username or "", safe=""), quote(url.password or "", safe="")
    parsed = BrokerUrl.parse(f"{url.scheme}://{user}:{password}@{host}")
    assert parsed == url
    assert parsed.password == url.password  # equal values, and the password itself too


@pytest.mark.parametrize(
    ("text", "tls", "port"),
    [("mqtt://broker", False, 1883), ("mqtts://broker", True, 8883), ("MQTTS://b:1", True, 1)],
)
def test_scheme_sets_tls_and_default_port(text: str, tls: bool, port: int):
    url = BrokerUrl.parse(text)
    assert (url.tls, url.port) == (tls, port)


def test_ipv6_in_brackets_and_host_case():
    url = BrokerUrl.parse("mqtts://[::1]:8884")
    assert (url.host, url.port, str(url)) == ("::1", 8884, "mqtts://[::1]:8884")
    assert BrokerUrl.parse("mqtt://Broker.Example").host == "broker.example"
    assert str(BrokerUrl.parse("mqtt://h/")) == "mqtt://h:1883"  # a bare slash is no path


def test_user_and_password_come_apart_and_the_password_is_never_shown():
    url = BrokerUrl.parse("mqtt://ada:s%40cret@broker:1883")
    assert (url.username, url.password) == ("ada", "s@cret")
    assert str(url) == "mqtt://ada@broker:1883"
    assert "cret" not in repr(url)
    with pytest.raises(BrokerUrlError) as info:
        BrokerUrl.parse("mqtt://ada:hunter2@broker:0")
    assert "hunter2" not in str(info.value)
    assert "ada:***@broker:0" in str(info.value)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("broker.example:1883", "no scheme"),
        ("http://broker.example", "scheme 'http' is not mqtt or mqtts"),
        ("mqtt://broker:0", "invalid port 0"),
        ("mqtt://broker:65536", "invalid port 65536"),
        ("mqtt://broker:http", "invalid port 'http'"),
        ("mqtt://broker:", "invalid port ''"),
        ("mqtt://broker:١٢", "invalid port"),  # Arabic-Indic digits are not a port
        ("mqtt://", "the host is empty"),
        ("mqtt://:1883", "the host is empty"),
        ("mqtt://user@", "the host is empty"),
        ("mqtt://broker/edgefleet", "path, query or fragment ('/edgefleet')"),
        ("mqtt://broker?tls=1", "path, query or fragment ('?tls=1')"),
        ("mqtt://broker#x", "path, query or fragment ('#x')"),
        ("mqtt://::1:1883", "IPv6 address must be in brackets"),
        ("mqtt://[::1", "[ADDRESS]:PORT"),
        ("mqtt://[::1]x", "[ADDRESS]:PORT"),
        ("mqtt://[zz::1]", "'zz::1' is not an IPv6 address"),
        ("mqtt://bro ker", "not a host name or IP address"),
    ],
)
def test_a_bad_url_says_what_is_wrong_and_shows_a_good_one(text: str, problem: str):
    with pytest.raises(BrokerUrlError) as info:
        BrokerUrl.parse(text)
    message = str(info.value)
    assert problem in message
    assert "for example mqtts://broker.example:8883" in message
    assert isinstance(info.value, EdgefleetError)
    assert isinstance(info.value, ValueError)  # pydantic validators report it per field


@pytest.mark.parametrize(
    "parts",
    [("http", "h", 1), ("mqtt", "", 1), ("mqtt", "h", 0), ("mqtt", "h", 70000), ("mqtt", "a b", 1)],
)
def test_no_invalid_value_can_be_built_from_parts(parts):
    with pytest.raises(BrokerUrlError):
        BrokerUrl(*parts)


def test_it_is_a_frozen_hashable_value():
    url = BrokerUrl.parse("mqtt://h")
    assert url == BrokerUrl("mqtt", "h", 1883)
    assert len({url, BrokerUrl("mqtt", "h", 1883)}) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        url.port = 2  # type: ignore[misc]
