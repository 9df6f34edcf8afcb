"""One scenario's measurements, its goals with verdicts, and how they print:
text for the terminal, Markdown for BENCHMARKS.md, JSON for results.json.
"""

import math
import statistics
import sys
import time

MET, NOT_MET, INFO, NA = "MET", "NOT MET", "info", "n/a"


class Unavailable(Exception):
    """What a variant needs is not there (a module command, a server, a tool)."""


class BenchError(Exception):
    pass


def log(msg):
    sys.stderr.write("[bench %s] %s\n" % (time.strftime("%H:%M:%S"), msg))
    sys.stderr.flush()


def percentile(sorted_xs, p):
    """Nearest-rank percentile: p in percent (50, 99, 99.9) of an ascending
    list; None for an empty list."""
    if not sorted_xs:
        return None
    n = len(sorted_xs)
    # The rank is ceil(p/100 * n); the small slack keeps float error (99.9/100
    # * 1000 = 999.0000000000001) from moving it up one.
    rank = int(math.ceil(p * n / 100.0 - 1e-9))
    return sorted_xs[min(n, max(1, rank)) - 1]


def _median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


class Result:
    """Rows of measurements (one per variant, one sample per round), goal
    lines, notes and extra tables for one scenario."""

    def __init__(self, name, title, columns):
        self.name = name
        self.title = title
        self.columns = columns      # [(header, field, kind)]; kind picks the format
        self.rows = []
        self._by_key = {}
        self.goals = []
        self.notes = []
        self.tables = []            # [{"title", "headers", "rows"}]
        self.error = None

    # -- measurements ------------------------------------------------------
    def row(self, key, label, tool):
        if key not in self._by_key:
            r = {"key": key, "label": label, "tool": tool, "samples": [],
                 "status": "ok", "median": {}, "min": {}, "max": {}}
            self.rows.append(r)
            self._by_key[key] = r
        return self._by_key[key]

    def add(self, key, **fields):
        self._by_key[key]["samples"].append(fields)

    def unavailable(self, key, reason):
        r = self._by_key[key]
        if r["status"] == "ok":
            r["status"] = "unavailable: %s" % reason

    def is_ok(self, key):
        return self._by_key[key]["status"] == "ok"

    def note(self, text):
        if text not in self.notes:
            self.notes.append(text)
            log("note: " + text)

    def table(self, title, headers, rows):
        self.tables.append({"title": title, "headers": headers, "rows": rows})

    def finalize(self):
        for r in self.rows:
            fields = sorted({f for s in r["samples"] for f in s})
            for f in fields:
                vals = [s.get(f) for s in r["samples"]
                        if isinstance(s.get(f), (int, float)) and not isinstance(s.get(f), bool)]
                if vals:
                    r["median"][f] = _median(vals)
                    r["min"][f] = min(vals)
                    r["max"][f] = max(vals)
            if r["status"] == "ok" and not r["samples"]:
                r["status"] = "no data"

    def med(self, key, field="value"):
        r = self._by_key.get(key)
        if r is None or r["status"] != "ok":
            return None
        return r["median"].get(field)

    # -- goals -------------------------------------------------------------
    def goal(self, label, value, op, target, unit="x", info=False, why_missing=None, row=None,
             short=None, summary=None):
        """A goal line. info=True: shown for reading, no verdict. Goals with a
        verdict go into the run's summary, and so do info lines with
        summary=True."""
        if value is None:
            verdict = NA
        elif info:
            verdict = INFO
        else:
            ok = {">=": value >= target, "<=": value <= target, "<": value < target,
                  "==": value == target}[op]
            verdict = MET if ok else NOT_MET
        self.goals.append({"label": label, "value": value, "op": op, "target": target,
                           "unit": unit, "verdict": verdict, "info": info,
                           "missing": why_missing if value is None else None,
                           "row": row, "short": short or label,
                           "summary": (not info) if summary is None else summary})

    def ratio(self, label, num, den, op, target, field="value", info=False, attach="num", summary=None):
        """Goal on median(num) / median(den). In the Markdown table the goal is
        shown on the `num` row, or on the `den` row with attach="den" (for
        goals written as baseline ÷ module)."""
        a, b = self.med(num, field), self.med(den, field)
        value = a / b if (a is not None and b not in (None, 0)) else None
        missing = "; ".join(
            "%s %s" % (self._by_key[k]["label"], self._by_key[k]["status"])
            for k in (num, den) if k in self._by_key and self._by_key[k]["status"] != "ok")
        if attach == "den":
            n = self._by_key.get(num)
            short = "%s (%s) ÷ this" % (n["label"], n["tool"]) if n else label
        else:
            d = self._by_key.get(den)
            short = "vs %s (%s)" % (d["label"], d["tool"]) if d else label
        if field != "value":
            short = "%s, %s" % (field, short)
        self.goal(label, value, op, target, "x", info=info, why_missing=missing or "no data",
                  row=num if attach == "num" else den, short=short, summary=summary)

    def to_json(self):
        return {"name": self.name, "title": self.title, "rows": self.rows,
                "goals": self.goals, "notes": self.notes, "error": self.error,
                "tables": self.tables,
                "columns": [{"header": h, "field": f, "kind": k} for h, f, k in self.columns]}

    @classmethod
    def from_json(cls, d):
        res = cls(d["name"], d["title"], [(c["header"], c["field"], c["kind"]) for c in d["columns"]])
        res.rows = d["rows"]
        res._by_key = {r["key"]: r for r in res.rows}
        res.goals = d["goals"]
        res.notes = d["notes"]
        res.tables = d.get("tables", [])
        res.error = d.get("error")
        return res


# ---------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------
def fmt(v, kind):
    if v is None:
        return "-"
    if kind == "rate" or kind == "instr":
        return "{:,.0f}".format(v)
    if kind == "us":
        return "%.2f" % v
    if kind == "x":
        return "%.2fx" % v
    if kind == "pct":
        return "%.0f%%" % v
    if kind == "ms":
        if v >= 100:
            return "%.0f" % v
        if v >= 10:
            return "%.1f" % v
        return "%.2f" % v if v >= 1 else "%.3f" % v
    if kind == "bytes":
        return "%.0f" % v
    if kind == "int":
        return "%d" % v
    return str(v)


_OPS = {">=": "≥", "<=": "≤", "<": "<", "==": "=="}


def fmt_goal(g):
    """(measured, target) as printed."""
    op = _OPS[g["op"]]
    if g["unit"] == "x":
        val = "-" if g["value"] is None else "%.2fx" % g["value"]
        tgt = "%s %gx" % (op, g["target"])
    elif g["unit"] == "instr":
        val = "-" if g["value"] is None else "{:,.0f}".format(g["value"])
        tgt = "%s {:,.0f}".format(g["target"]) % op
    else:
        val = "-" if g["value"] is None else "%s %s" % (fmt(g["value"], "ms"), g["unit"])
        tgt = "%s %g %s" % (op, g["target"], g["unit"])
    if g["info"]:
        tgt = "(for reading)"
    return val, tgt


def _row_cells(res, r):
    if r["status"] != "ok":
        return [r["label"], r["tool"], r["status"]] + [""] * len(res.columns)
    cells = [r["label"], r["tool"]] + [fmt(r["median"].get(f), k) for _, f, k in res.columns]
    f0, k0 = res.columns[0][1], res.columns[0][2]
    n = len(r["samples"])
    cells.append("%s..%s" % (fmt(r["min"].get(f0), k0), fmt(r["max"].get(f0), k0))
                 if n > 1 and r["min"].get(f0) is not None else "")
    return cells


def render_text(res):
    out = ["", "== %s: %s" % (res.name, res.title)]
    if res.error:
        out.append("   ERROR: %s" % res.error)
    headers = ["variant", "generator"] + [h for h, _, _ in res.columns] + ["min..max (1st col)"]
    table = [_row_cells(res, r) for r in res.rows]
    widths = [max(len(str(row[i])) for row in [headers] + table if i < len(row))
              for i in range(len(headers))]
    for row, r in zip([headers] + table, [None] + res.rows):
        cells = row if r is None or r["status"] == "ok" else row[:3]
        out.append("   " + "  ".join(str(c).ljust(widths[i]) for i, c in enumerate(cells)).rstrip())
    for t in res.tables:
        out.append("   %s" % t["title"])
        w = [max(len(str(x[i])) for x in [t["headers"]] + t["rows"]) for i in range(len(t["headers"]))]
        for x in [t["headers"]] + t["rows"]:
            out.append("     " + "  ".join(str(c).ljust(w[i]) for i, c in enumerate(x)).rstrip())
    if res.goals:
        out.append("   goals:")
        lw = max(len(g["label"]) for g in res.goals)
        for g in res.goals:
            val, tgt = fmt_goal(g)
            line = "     %s  %10s  %-14s %s" % (g["label"].ljust(lw), val, tgt, g["verdict"])
            if g["missing"]:
                line += "  (%s)" % g["missing"]
            out.append(line)
    for n in res.notes:
        out.append("   note: %s" % n)
    return "\n".join(out)


def _md_cell(c):
    return str(c).replace("|", "\\|")


def render_markdown(res):
    out = ["### %s — %s" % (res.name, res.title), ""]
    if res.error:
        out += ["**Error:** %s" % res.error, ""]
    hdr = ["variant", "generator"] + [h for h, _, _ in res.columns] + ["min..max (1st col)"]
    out.append("| " + " | ".join(hdr) + " |")
    out.append("|" + "---|" * len(hdr))
    for r in res.rows:
        out.append("| " + " | ".join(_md_cell(c) for c in _row_cells(res, r)) + " |")
    for t in res.tables:
        out += ["", t["title"], "", "| " + " | ".join(t["headers"]) + " |",
                "|" + "---|" * len(t["headers"])]
        for x in t["rows"]:
            out.append("| " + " | ".join(_md_cell(c) for c in x) + " |")
    if res.goals:
        out += ["", "| goal | measured | target | verdict |", "|---|---|---|---|"]
        for g in res.goals:
            val, tgt = fmt_goal(g)
            verdict = g["verdict"] + (" (%s)" % g["missing"] if g["missing"] else "")
            out.append("| %s | %s | %s | %s |" % (_md_cell(g["label"]), val, tgt, _md_cell(verdict)))
    for n in res.notes:
        out += ["", "- %s" % n]
    out.append("")
    return "\n".join(out)


def summary_rows(results):
    """Every goal that has a verdict, and the info lines marked for the
    summary, in run order."""
    rows = []
    for res in results:
        for g in res.goals:
            if not g.get("summary", not g["info"]):
                continue
            val, tgt = fmt_goal(g)
            verdict = g["verdict"] + (" (%s)" % g["missing"] if g["missing"] else "")
            rows.append((res.name, g["label"], val, tgt, verdict))
        if res.error:
            rows.append((res.name, "scenario failed", "-", "-", res.error[:120]))
    return rows


def render_summary_text(results):
    rows = summary_rows(results)
    if not rows:
        return ""
    hdr = ("scenario", "goal", "measured", "target", "verdict")
    w = [max(len(str(x[i])) for x in [hdr] + rows) for i in range(5)]
    out = ["", "== summary: every goal of this run"]
    for x in [hdr] + rows:
        out.append("   " + "  ".join(str(c).ljust(w[i]) for i, c in enumerate(x)).rstrip())
    met = sum(1 for x in rows if x[4] == MET)
    out.append("   %d of %d goals met" % (met, sum(1 for x in rows if x[4] != INFO)))
    return "\n".join(out)


def render_summary_markdown(results):
    rows = summary_rows(results)
    out = ["| scenario | goal | measured | target | verdict |", "|---|---|---|---|---|"]
    for x in rows:
        out.append("| " + " | ".join(_md_cell(c) for c in x) + " |")
    return "\n".join(out) + "\n"
