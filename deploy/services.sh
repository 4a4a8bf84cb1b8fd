#!/usr/bin/env bash
# Make sure the local PostgreSQL and Redis answer; start whichever is down.
set -uo pipefail

redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; }
pg_up() { pg_isready -h 127.0.0.1 -p 5432 -q >/dev/null 2>&1; }

if ! redis_up; then
  echo "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
fi
if ! pg_up; then
  echo "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
fi
for _ in $(seq 1 60); do
  if redis_up && pg_up; then
    exit 0
  fi
  sleep 0.5
done
redis_up || echo "Redis does not answer on 127.0.0.1:6379" >&2
pg_up || echo "PostgreSQL does not answer on 127.0.0.1:5432" >&2
exit 1
