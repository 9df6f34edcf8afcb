#!/usr/bin/env bash
# Builds the floor modules (floor_events.so, floor_set.so, floor_purge.so) next to this
# script, with the module API header the redis-module crate ships.
set -euo pipefail
cd "$(dirname "$0")"
inc=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -path '*redis-module-2.0.8/src/include' -type d | head -1)
[ -n "$inc" ] || { echo "redismodule.h not found: cargo build the module first" >&2; exit 1; }
for m in floor_events floor_set floor_purge; do
    gcc -O2 -shared -fPIC -I"$inc" -o "$m.so" "$m.c"
done
echo "built floor_events.so floor_set.so floor_purge.so in $(pwd)"
