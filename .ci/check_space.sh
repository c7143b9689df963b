#!/usr/bin/env bash
# CI: a fresh venv built from requirements.txt alone (plus the CPU torch pin) serves the app's page, as a Space would.
set -euo pipefail
cd "$(dirname "$0")/.."
work="$(mktemp -d)"
venv="$work/space"
log="$work/app.log"
pid=""
trap '[ -z "$pid" ] || { kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; }; rm -rf "$work"' EXIT
python3.11 -m venv "$venv"
"$venv/bin/pip" install -q torch==2.13.0
"$venv/bin/pip" install -q -r requirements.txt
port="$("$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
HF_HUB_OFFLINE=1 "$venv/bin/python" app.py --port "$port" >"$log" 2>&1 &
pid=$!
for _ in $(seq 1 120); do
  if [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/")" = "200" ]; then
    echo "check_space: the page is served (HTTP 200) on port $port"
    exit 0
  fi
  kill -0 "$pid" 2>/dev/null || break
  sleep 1
done
echo "check_space: no HTTP 200 within 120 s; the app's log:" >&2
cat "$log" >&2
exit 1
