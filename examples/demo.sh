#!/usr/bin/env bash
# The main job on the embedded default store (SQLite): build, queue example jobs for two
# groups, run a supervisor until the queue is empty, and show what happened.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
echo "== building the release binary (the first time takes a few minutes; cargo shows its progress)"
cargo build --release --manifest-path "$root/Cargo.toml"
bin=$root/target/release/supervisor
demo=$(mktemp -d /tmp/supervisor-demo-XXXXXX)
cp "$root/examples/supervisor.json" "$demo/supervisor.json"
cd "$demo"
export SUPERVISOR_CONFIG=$demo/supervisor.json

"$bin" check
for i in 1 2 3; do
  "$bin" submit --tag arch=x86_64 -- sh -c "echo building x86_64 package $i; sleep 0.2" >/dev/null
  "$bin" submit --tag arch=aarch64 -- sh -c "echo building aarch64 package $i; sleep 0.2" >/dev/null
done
"$bin" submit --tag arch=i386 --max-attempts 2 -- sh -c 'echo "attempt $SUPERVISOR_ATTEMPT fails"; exit 1' >/dev/null
"$bin" submit --group arm --timeout 0.5 --max-attempts 1 -- sleep 5 >/dev/null

"$bin" run --until-empty
echo
"$bin" jobs
echo
"$bin" status
echo
echo "events: $demo/state/events.jsonl; logs: $demo/state/logs/ (remove $demo when done)"
