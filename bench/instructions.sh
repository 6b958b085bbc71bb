#!/bin/bash
# Instructions per /v1 request of one portal worker, counted by valgrind's callgrind.
#
#   bench/instructions.sh [REQUESTS]        (default 1000; run from the project root, with .venv installed)
#
# On a shared virtual machine the wall-clock and CPU-time figures of `make bench` swing by ±30% between two
# runs of the same commit (the neighbours' load changes the cores' speed); an instruction count does not
# depend on how fast the cores run, so it compares two commits where timing cannot. It still moves by a few
# percent between runs (background timers and the usage writer's flushes fall differently), so compare
# figures of a few runs each. The portal runs as `make run` would (gunicorn, one uvicorn worker, SQLite, no
# Redis) against the benchmark's mock upstream; callgrind counts only between the warm-up and the end of
# the load (non-streaming chat completions at concurrency 1 with a real user key).
set -euo pipefail
N=${1:-1000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=$ROOT/.venv/bin/python
RUN=$(mktemp -d)
trap 'kill $PORTAL $MOCK 2>/dev/null || true; sleep 1; kill -9 $PORTAL 2>/dev/null || true; rm -rf "$RUN"' EXIT
cd "$ROOT"
free_port() { $PY -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }
MOCK_PORT=$(free_port); PORT=$(free_port)
$PY -m tests.mock_upstream --host 127.0.0.1 --port "$MOCK_PORT" > "$RUN/mock.log" 2>&1 &
MOCK=$!
export DJANGO_SETTINGS_MODULE=portal.settings WEB_CONCURRENCY=1 HOST=127.0.0.1 PORT PORTAL_DATA_DIR=$RUN/data \
  PORTAL_CONFIG=$RUN/none.yaml GITHUB_COPILOT_TOKEN_DIR=$RUN/no-copilot DEBUG=false \
  SECRET_KEY=$($PY -c "import secrets; print(secrets.token_urlsafe(40))") \
  LITELLM_MASTER_KEY=sk-master-$($PY -c "import secrets; print(secrets.token_urlsafe(16))") \
  LITELLM_LOCAL_MODEL_COST_MAP=True DATABASE_URL=sqlite:///$RUN/data/db.sqlite3 LOG_LEVEL=warning \
  ACCESS_LOG=false PORTAL_ENV_FILE=/dev/null
unset REDIS_URL
mkdir -p "$RUN/data"
$PY manage.py prepare > "$RUN/prepare.log" 2>&1
for _ in $(seq 1 50); do curl -sf "http://127.0.0.1:$MOCK_PORT/v1/models" > /dev/null && break; sleep 0.2; done
KEY=$($PY bench/portal_setup.py setup --mock "http://127.0.0.1:$MOCK_PORT" --paced "http://127.0.0.1:$MOCK_PORT" \
  | tail -n 1 | $PY -c "import json, sys; print(json.load(sys.stdin)['key'])")
valgrind --tool=callgrind --trace-children=yes --instr-atstart=no --callgrind-out-file="$RUN/cg.%p.out" \
  "$(dirname "$PY")/gunicorn" portal.asgi:application -c deploy/gunicorn.conf.py > "$RUN/portal.log" 2>&1 &
PORTAL=$!
for _ in $(seq 1 240); do curl -sf "http://127.0.0.1:$PORT/health/liveliness" > /dev/null && break; sleep 1; done
load() {
  $PY - "http://127.0.0.1:$PORT/v1/chat/completions" "$KEY" "$1" <<'PYEOF'
import asyncio, sys
import aiohttp, orjson
url, key, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
async def main() -> None:
    body = orjson.dumps({"model": "bench-model", "messages": [{"role": "user", "content": "Say hello, benchmark."}]})
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as session:
        for _ in range(n):
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    sys.exit(f"status {response.status}")
asyncio.run(main())
PYEOF
}
load 200
callgrind_control -i on > /dev/null 2>&1
load "$N"
callgrind_control -d > /dev/null 2>&1
sleep 3
total=0
for f in "$RUN"/cg.*.out.1; do
  ir=$(grep -m1 '^summary:' "$f" | awk '{print $2}')
  total=$((total + ${ir:-0}))
done
echo "instructions per request: $((total / N)) ($N requests, commit $(git rev-parse --short HEAD))"
