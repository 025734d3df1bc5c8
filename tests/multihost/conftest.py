"""Fixtures for tests across hosts (network namespaces, tests/hosts): they need root and
take seconds, so every test here is marked ``faults`` (``make test-faults``) and skips when
hosts cannot be made.

``hosts``: three hosts h1..h3 shared by a module's tests; after each test every link is
healed and every nftables rule dropped. ``rabbit_cluster``: a RabbitMQ node on each of them,
clustered, shared by the module (a test that stops a node starts it again).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.hosts import Hosts, unavailable
from tests.hosts.rabbit import RabbitCluster


@pytest.fixture(scope="module")
def module_hosts() -> Iterator[Hosts]:
    if (reason := unavailable()) is not None:
        pytest.skip(reason)
    with Hosts(3) as hosts:
        yield hosts


@pytest.fixture
def hosts(module_hosts: Hosts) -> Iterator[Hosts]:
    yield module_hosts
    for host in module_hosts:
        host.heal()
        host.clear_rules()


@pytest.fixture(scope="module")
def rabbit_cluster(module_hosts: Hosts) -> Iterator[RabbitCluster]:
    if (reason := RabbitCluster.unavailable()) is not None:
        pytest.skip(reason)
    cluster = RabbitCluster(list(module_hosts)).start()
    yield cluster
    cluster.stop()
