"""The floor: the least a consumer can do for the same job (``python -m bench.floor``).

aio-pika + asyncpg, prefetch = concurrency, manual ack after the ``ready`` row commits.
No lease, no claim, no attempts log, no outbox, no retry or dead-letter routing, no
duplicate-delivery protection: what bgworker adds on top of this is its guarantees.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import uuid
from pathlib import Path

import aio_pika
import asyncpg
from aio_pika.abc import AbstractIncomingMessage

from bench import workload


async def _no_reset(conn: asyncpg.Connection) -> None:
    return None


async def serve(queue_name: str, dsn: str, root: Path, prefetch: int, amqp_url: str) -> None:
    # No reset query on release (asyncpg runs one round trip per release by default): the
    # job keeps no session state, and bgworker skips it too (bgworker.store.connection).
    pool = await asyncpg.create_pool(dsn, min_size=prefetch, max_size=prefetch, reset=_no_reset)
    assert pool is not None
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=prefetch)
    queue = await channel.get_queue(queue_name, ensure=False)
    tasks: set[asyncio.Task[None]] = set()

    async def job(message: AbstractIncomingMessage) -> None:
        body = json.loads(message.body)
        request_id = uuid.UUID(body["id"])
        await pool.execute(workload.INSERT_QUEUED, request_id)
        await pool.execute(workload.MARK_RUNNING, request_id)
        key = workload.key_for(request_id)
        data = workload.csv_bytes(int(body["seed"]))
        size, digest = await asyncio.to_thread(workload.write_atomic, root, key, data)
        await pool.execute(workload.MARK_READY, request_id, size, digest, key)
        await message.ack()

    async def on_message(message: AbstractIncomingMessage) -> None:
        task = asyncio.create_task(job(message))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tag = await queue.consume(on_message)
    await stop.wait()
    await queue.cancel(tag)
    if tasks:
        await asyncio.wait(tasks, timeout=10)
    await connection.close()
    await pool.close()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.floor")
    p.add_argument("--queue", required=True)
    p.add_argument("--dsn", required=True)
    p.add_argument("--storage", type=Path, required=True)
    p.add_argument("--prefetch", type=int, default=4)
    p.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/")
    args = p.parse_args()
    asyncio.run(serve(args.queue, args.dsn, args.storage, args.prefetch, args.amqp_url))


if __name__ == "__main__":
    main()
