"""What the benchmark shares with the integration tests.

Starting a server (free loopback port, PING wait, kill, log tail) and the raw
RESP connection live in tests/harness.py; the benchmark uses them from there
rather than keeping copies. This module puts tests/ on the import path once.
"""

import os
import sys

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)

if os.path.join(ROOT, "tests") not in sys.path:
    sys.path.insert(0, os.path.join(ROOT, "tests"))

import harness  # noqa: E402,F401  (re-exported)
