"""``BGWORKER_AMQP_URL`` as a list of nodes: parsing, and the aio-pika hook it relies on."""

from __future__ import annotations

import pytest
from aio_pika.robust_connection import RobustConnection
from hypothesis import given
from hypothesis import strategies as st

from bgworker.messaging import failover
from bgworker.observe import logs

SECRET = "s3cr3t-pass"
hosts = st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,10}){0,2}", fullmatch=True)
ports = st.integers(1, 65535)


@st.composite
def node_urls(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(["amqp", "amqps"]))
    vhost = draw(st.sampled_from(["", "/", "/%2F", "/prod"]))
    return f"{scheme}://user:{SECRET}@{draw(hosts)}:{draw(ports)}{vhost}"


def test_one_url_is_a_list_of_one() -> None:
    url = "amqp://guest:guest@127.0.0.1:5672/"
    assert failover.parse_urls(url) == (url,)


@given(st.lists(node_urls(), min_size=1, max_size=5), st.sampled_from([",", ", ", " , "]))
def test_a_list_parses_back_to_its_urls_in_order(urls: list[str], comma: str) -> None:
    assert failover.parse_urls(comma.join(urls)) == tuple(urls)
    # The log's address names every node, and never a password.
    said = logs.address(",".join(urls))
    assert said.count(",") == len(urls) - 1
    assert SECRET not in said


@given(st.lists(node_urls(), min_size=1, max_size=4), st.data())
def test_an_empty_entry_is_refused_by_position(urls: list[str], data: st.DataObject) -> None:
    at = data.draw(st.integers(0, len(urls)))
    entries = [*urls[:at], " ", *urls[at:]]
    with pytest.raises(ValueError, match=f"entry {at + 1} of {len(entries)} is empty") as err:
        failover.parse_urls(",".join(entries))
    assert SECRET not in str(err.value)


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ("http://guest:s3cr3t-pass@host:5672/", "must start with amqp:// or amqps://"),
        ("amqp://guest:s3cr3t-pass@:5672/", "name a host"),
        ("amqp://guest:s3cr3t-pass@host:99999/", "not a valid URL"),
        ("guest:s3cr3t-pass@host", "must start with amqp://"),
        ("", "is empty"),
    ],
)
def test_a_malformed_entry_is_refused_clearly(bad: str, says: str) -> None:
    for value, where in ((bad, ""), (f"amqp://a:5672/,{bad}", "entry 2 of 2 ")):
        with pytest.raises(ValueError, match=f"{where}.*{says}" if where else says) as err:
            failover.parse_urls(value)
        assert SECRET not in str(err.value)


@given(st.text(max_size=200))
def test_any_text_parses_or_is_refused_with_a_value_error(value: str) -> None:
    try:
        urls = failover.parse_urls(value)
    except ValueError:
        return
    assert urls and all(u.startswith(("amqp://", "amqps://")) for u in urls)


def test_the_aio_pika_hook_still_exists() -> None:
    # failover.Connection overrides the (name-mangled) method aio-pika's robust connection
    # calls for every connect attempt; renamed, the override would silently do nothing.
    assert callable(getattr(RobustConnection, "_RobustConnection__connect_transport", None))
    assert "_RobustConnection__connect_transport" in vars(failover.Connection)
