"""The scenario registry.

A scenario is a function that takes the run context (runner.Ctx) and returns
a report.Result, or a list of them (one table each). Decorate it with
@scenario("name", "one-line description") in a module of this package and
import that module below: scenarios run in the order they are registered,
and `--only name` picks some.
"""

SCENARIOS = {}


def scenario(name, description):
    def deco(fn):
        SCENARIOS[name] = (fn, description)
        return fn
    return deco


# Registration order = run order: the goals in the order BENCHMARKS.md lists them.
from . import tagset, callgrind, tax, purge, memory, vget, purge_latency, stampede, cluster, reshard, tagshapes  # noqa: E402,F401,E501
