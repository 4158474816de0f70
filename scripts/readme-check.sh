#!/usr/bin/env bash
# Follow the README word for word: run its first quick-start command (set up
# and run `capstan dev`), paste the conversation the banner prints into a
# shell, and require that the run streams to `run.succeeded`.
set -euo pipefail
cd "$(dirname "$0")/.."

cmd=$(awk '/^```sh$/{f=1; next} f{print; exit}' README.md | sed 's/[[:space:]]*#.*$//')
[ -n "$cmd" ] || { echo "readme-check: no quick-start command found in README.md" >&2; exit 1; }
echo "readme-check: running: $cmd"

work=$(mktemp -d)
port=$((20000 + RANDOM % 20000))
log="$work/dev.log"
PORT=$port CAPSTAN_DATA_DIR="$work/data" CAPSTAN_LOG_LEVEL=warn bash -c "$cmd" >"$log" 2>&1 &
pid=$!
cleanup() { pkill -TERM -P "$pid" 2>/dev/null || true; kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

for _ in $(seq 1 240); do
  grep -q 'messages" -H' "$log" && break
  kill -0 "$pid" 2>/dev/null || { cat "$log"; echo "readme-check: capstan dev exited" >&2; exit 1; }
  sleep 0.5
done
sed -n '/^export CAPSTAN_URL/,/messages" -H/p' "$log" >"$work/snippet.sh"
[ -s "$work/snippet.sh" ] || { cat "$log"; echo "readme-check: no banner" >&2; exit 1; }
out=$(timeout 60 bash "$work/snippet.sh")
echo "$out" | grep -q '^event: run.succeeded$' || { echo "$out"; echo "readme-check: the run did not succeed" >&2; exit 1; }
echo "$out" | grep -q '"blue mug"' || { echo "$out"; echo "readme-check: no tool result in the history" >&2; exit 1; }
echo "readme-check: ok (conversation streamed to run.succeeded)"
