#!/usr/bin/env bash
# Start PostgreSQL and RabbitMQ on this machine if they are not answering, then wait for them.
set -euo pipefail

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
rabbit_up() { rabbitmqctl -q await_startup >/dev/null 2>&1 && (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }

if ! pg_up; then
  echo "services: starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
fi
if ! rabbit_up; then
  echo "services: starting RabbitMQ"
  rabbitmq-server -detached || true
fi
for _ in $(seq 1 90); do
  if pg_up && rabbit_up; then echo "services: PostgreSQL and RabbitMQ are up"; exit 0; fi
  sleep 1
done
pg_up || echo "services: PostgreSQL is not answering on 127.0.0.1:5432" >&2
rabbit_up || echo "services: RabbitMQ is not answering on 127.0.0.1:5672" >&2
exit 1
