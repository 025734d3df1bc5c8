"""Multi-host tooling for the tests and the bench: hosts made of network namespaces
(topology.py), a RabbitMQ cluster across them (rabbit.py), proxies between namespaces with
optional latency (proxy.py, relay.py), and a registry so a crashed run is cleaned up (registry.py).
docs/hosts.md shows how to use it."""

from tests.hosts.procs import kill
from tests.hosts.proxy import Proxy
from tests.hosts.topology import FILES, Host, Hosts, unavailable

__all__ = ["FILES", "Host", "Hosts", "Proxy", "kill", "unavailable"]
