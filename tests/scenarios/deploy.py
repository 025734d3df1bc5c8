"""One scenario's deployment on the site's hosts: its bucket, its receivers exposed to the
hosts, a server on ``srv`` and a worker on each worker host, all with the test's own
database and namespace; stopped and the site restored at the end."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.messaging import topology
from tests import s3
from tests.hosts import Proxy
from tests.scenarios.conftest import scenario_env
from tests.scenarios.harness import Fault, Producer, Report, Scenario, plan
from tests.scenarios.processes import Processes
from tests.scenarios.receivers import Mailbox, WebhookReceiver
from tests.scenarios.site import SERVE_PORT, SERVER, WORKERS, OnHosts, Site, close


@dataclass
class Deployment:
    site: Site
    settings: settings_mod.Settings
    db: store.Store
    mailbox: Mailbox
    hooks: WebhookReceiver
    log_dir: Path
    procs: Processes = field(init=False)
    env: dict[str, str] = field(init=False)
    _proxies: list[Proxy] = field(default_factory=list)

    async def start(
        self, worker_env: Callable[[str], dict[str, str]] = lambda host: {}
    ) -> Deployment:
        site = self.site
        bucket = await s3.new_bucket(self.site.s3)
        mail, hook = site.expose(self.mailbox.port), site.expose(self.hooks.port)
        self._proxies += [mail, hook]
        env = scenario_env(self.settings, self.mailbox, self.hooks, site.server_url)
        env.update(
            {
                "BGWORKER_DATABASE_URL": site.database_url(
                    self.settings.database_url.get_secret_value()
                ),
                "BGWORKER_SMTP__HOST": site.gw,
                "BGWORKER_SMTP__PORT": str(mail.port),
                "BGWORKER_WEBHOOKS__URL": f"http://{site.gw}:{hook.port}/hook",
                "BGWORKER_STORAGE__BACKEND": "s3",
                "BGWORKER_STORAGE__S3_BUCKET": bucket,
                "BGWORKER_STORAGE__S3_ENDPOINT_URL": f"http://{site.gw}:{site.s3_port}",
                "BGWORKER_STORAGE__S3_ACCESS_KEY_ID": s3.ACCESS_KEY,
                "BGWORKER_STORAGE__S3_SECRET_ACCESS_KEY": s3.SECRET_KEY,
                "BGWORKER_STORAGE__S3_TIMEOUT_SECONDS": "5",
                "BGWORKER_WEB__DOWNLOAD_MODE": "stream",
            }
        )
        self.env = env
        self.procs = Processes(env, self.log_dir, OnHosts(site.hosts, self.settings.namespace))
        # The whole topology declared on r1 first: r1 leads the work queue and holds every
        # other queue, as when a deployment's first client connects there.
        await self.declare_topology()
        server_host = site.hosts[SERVER]
        await self.procs.server(
            SERVER,
            server_host.addr,
            SERVE_PORT,
            site.server_url,
            {"BGWORKER_AMQP_URL": site.node_urls(0)},
        )
        await asyncio.gather(
            *(
                self.procs.worker(
                    host, {"BGWORKER_AMQP_URL": site.node_urls(i), **worker_env(host)}
                )
                for i, host in enumerate(WORKERS)
            )
        )
        return self

    @property
    def topology(self) -> topology.Topology:
        return topology.Topology(
            self.settings.namespace,
            tuple(self.settings.worker.retry_delays_seconds),
            self.settings.queue_type,
        )

    async def declare_topology(self) -> None:
        url = self.site.producer_urls.split(",")[0]
        connection = await aio_pika.connect(url)
        try:
            await self.topology.declare(await connection.channel())
        finally:
            await connection.close()

    def scenario(
        self,
        name: str,
        n: int,
        *,
        long_every: int = 0,
        publish_seconds: float = 20.0,
        settle_timeout: float = 90.0,
    ) -> Scenario:
        return Scenario(
            name,
            plan(n, seed=hash(self.settings.namespace), long_every=long_every),
            self.db,
            Producer(self.site.producer_urls, self.settings.namespace, self.settings.queue_type),
            self.mailbox,
            self.hooks,
            [self.procs.placement.builds_outside(h) for h in WORKERS],
            publish_seconds=publish_seconds,
            settle_timeout=settle_timeout,
        )

    async def run(
        self,
        name: str,
        n: int,
        fault: Fault | None = None,
        *,
        publish_seconds: float = 20.0,
        settle_timeout: float = 90.0,
    ) -> Report:
        scenario = self.scenario(
            name, n, publish_seconds=publish_seconds, settle_timeout=settle_timeout
        )
        return await scenario.run(fault)

    async def stop(self) -> dict[str, int | None]:
        codes = await self.procs.stop() if hasattr(self, "procs") else {}
        for proxy in self._proxies:
            close(proxy)
        await asyncio.to_thread(self.site.restore)
        return codes
