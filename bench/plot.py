"""A dependency-free SVG line plot: GET latency over time, one line per
method (bench/scenarios/purge_latency.py writes the series)."""

COLORS = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]


def latency_svg(series, title, width=900, height=420):
    """series: [(label, [(seconds since the call, latency ms), ...])].
    The latency axis is logarithmic (0.1 ms .. the largest seen)."""
    import math
    left, right, top, bottom = 70, 20, 40, 60
    w, h = width - left - right, height - top - bottom
    t_max = max((t for _, pts in series for t, _ in pts), default=1.0) or 1.0
    l_max = max((l for _, pts in series for _, l in pts), default=1.0)
    lo, hi = math.log10(0.1), math.log10(max(l_max, 1.0) * 1.2)

    def x(t):
        return left + w * t / t_max

    def y(ms):
        v = math.log10(max(ms, 0.1))
        return top + h - h * (v - lo) / (hi - lo)

    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" '
           'font-size="12">' % (width, height),
           '<rect width="100%" height="100%" fill="white"/>',
           '<text x="%d" y="20" font-size="14">%s</text>' % (left, _esc(title))]
    for ms in (0.1, 1, 10, 100, 1000, 10000):
        if math.log10(ms) > hi:
            break
        out.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/>' % (left, left + w, y(ms), y(ms)))
        out.append('<text x="%d" y="%.1f" text-anchor="end">%g ms</text>' % (left - 6, y(ms) + 4, ms))
    steps = 5
    for i in range(steps + 1):
        t = t_max * i / steps
        out.append('<text x="%.1f" y="%d" text-anchor="middle">%.1f s</text>' % (x(t), top + h + 18, t))
    out.append('<text x="%d" y="%d" text-anchor="middle">time since the call (s)</text>'
               % (left + w // 2, top + h + 40))
    out.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#999" stroke-dasharray="4 3"/>'
               % (left, left + w, y(10), y(10)))
    for i, (label, pts) in enumerate(series):
        color = COLORS[i % len(COLORS)]
        path = " ".join("%.1f,%.1f" % (x(t), y(l)) for t, l in pts)
        out.append('<polyline fill="none" stroke="%s" stroke-width="1.2" points="%s"/>' % (color, path))
        out.append('<text x="%d" y="%d" fill="%s">%s</text>' % (left + w - 330, top + 16 + 16 * i, color,
                                                               _esc(label)))
    out.append("</svg>")
    return "\n".join(out)


def _esc(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
