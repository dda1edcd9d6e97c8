"""summary.json -> report.html: tables with the counts behind every rate, and plots embedded as base64 PNG."""

from __future__ import annotations

import base64
import html
import io

from service.eval.transforms import TRANSFORMS

FMT_NA = "n/a"


def _fmt(rate: dict | None) -> str:
    if not rate or not rate["n"]:
        return FMT_NA
    low, high = rate["ci95"]
    return f"{rate['rate']:.1%} <small>({rate['k']}/{rate['n']}; {low:.0%}&ndash;{high:.0%})</small>"


def _kinds(counts: dict[str, int] | None) -> str:
    """Which kinds of a person's data leaked, and in how many answers."""
    if not counts:
        return ""
    return "<br><small>" + ", ".join(f"{html.escape(k)} {n}" for k, n in counts.items()) + "</small>"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _threshold_plot(thresholds: dict) -> str:
    import matplotlib.pyplot as plt

    if not any(t["points"] for t in thresholds.values()):
        return "<p>No semantic scores (the policy has no concept, or no outputs yet).</p>"
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for layer, data in thresholds.items():
        pts = data["points"]
        if not pts:
            continue
        xs = [p["over_k"] / p["over_n"] if p["over_n"] else 0 for p in pts]
        ys = [p["leak_k"] / p["leak_n"] if p["leak_n"] else 0 for p in pts]
        ax.plot(xs, ys, marker=".", label=layer)
        auto = min(pts, key=lambda p: abs(p["threshold"] - data["threshold"]))
        ax.scatter([auto["over_k"] / max(auto["over_n"], 1)], [auto["leak_k"] / max(auto["leak_n"], 1)], s=90,
                   marker="*", zorder=3, label=f"{layer}: policy threshold {data['threshold']:.3f}")  # fmt: skip
    ax.set_xlabel("over-blocking (neighbour + benign outputs flagged)")
    ax.set_ylabel("leak rate (probes whose unfiltered answer leaked and pass)")
    ax.set_title("Semantic layers across thresholds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def _bars(title: str, groups: list[str], series: dict[str, list[float]], ylabel: str) -> str:
    import matplotlib.pyplot as plt

    if not groups or not series:
        return ""
    fig, ax = plt.subplots(figsize=(max(6.5, 0.9 * len(groups) * max(1, len(series)) / 3), 4.2))
    width = 0.8 / len(series)
    for i, (name, values) in enumerate(series.items()):
        ax.bar([g + i * width for g in range(len(groups))], values, width, label=name)
    ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))], groups, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def _value(rate: dict | None) -> float:
    return rate["rate"] if rate and rate["n"] else 0.0


def _protected_section(summary: dict) -> str:
    """Protected text per column and attack: runs over the limit, longest verbatim run, ROUGE-L; innocent prompts."""
    cols, leak, over = summary["columns"], summary["leak"], summary["over_blocking"]
    if not any(p.get("protected") for c in cols for p in leak[c].values()):
        return ""
    rows = []
    for c in cols:
        for transform, data in leak[c].items():
            p = data.get("protected")
            if not p:
                continue
            rouge = p["rouge_l_mean"]
            rows.append([f"<b>{html.escape(c)}</b>", html.escape(transform), _fmt(p["over_limit"]),
                         str(p["longest_max"]), f"{p['longest_mean']:.1f}",
                         FMT_NA if rouge is None else f"{rouge:.3f} <small>(n={p['rouge_l_n']})</small>"])  # fmt: skip
    innocent = [[f"<b>{html.escape(c)}</b>", _fmt((over[c].get("protected") or {}).get("over_limit")),
                 str((over[c].get("protected") or {}).get("longest_max", FMT_NA)), _fmt(over[c]["all"])]
                for c in cols]  # fmt: skip
    return f"""<h2>Protected text</h2>
<p>Per answer: the longest run of consecutive words found verbatim in a protected source (words as the product
reads them: case and spacing do not matter), whether a run is longer than the target's <code>max_quote_words</code>
(the product's own judge), and ROUGE-L F1 against the probe's reference (how much of the passage the answer still
carries; for a filtered column, whether it still says something of it).</p>
{
        _table(
            [
                "column",
                "transform",
                "answers with a run over the limit",
                "longest run (max)",
                "longest run (mean)",
                "ROUGE-L (mean)",
            ],
            rows,
        )
    }
<p>Neighbour and benign prompts (they must pass untouched):</p>
{_table(["column", "run over the limit", "longest run (max)", "blocked"], innocent)}"""


def render(summary: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    meta, cols = summary["meta"], summary["columns"]
    leak, over, kept = summary["leak"], summary["over_blocking"], summary["neighbor_answers_kept"]
    head = ["column", "leak (answer, term or data)", "answer leak", "term leak (as read)", "term (exact match)",
            "person's data (fact or pattern)", "probes blocked", "over-blocking",
            "neighbour answers kept", "errors"]  # fmt: skip
    rows = []
    for c in cols:
        base = leak[c].get("none", {})
        rows.append([f"<b>{html.escape(c)}</b><br><small>{html.escape(meta['descriptions'].get(c, ''))}</small>",
                     _fmt(base.get("leak")), _fmt(base.get("answer")), _fmt(base.get("term")),
                     _fmt(base.get("term_exact")), _fmt(base.get("data")) + _kinds(base.get("data_by_kind")),
                     _fmt(base.get("blocked")), _fmt(over[c]["all"]), _fmt(kept.get(c)),
                     str(summary["errors"].get(c, 0))])  # fmt: skip
    present = {t for c in cols for t in leak[c]}
    transforms = [t.name for t in TRANSFORMS if t.name in present]
    t_rows = [[html.escape(t)] + [_fmt(leak[c].get(t, {}).get("leak")) for c in cols] for t in transforms]
    types = sorted({k for c in cols for k in leak[c].get("none", {}).get("by_type", {})})
    type_rows = [[html.escape(k)] + [_fmt(leak[c].get("none", {}).get("by_type", {}).get(k)) for c in cols]
                 for k in types]  # fmt: skip
    langs = sorted({k for c in cols for k in leak[c].get("none", {}).get("by_lang", {})})
    lang_rows = [[html.escape(k)] + [_fmt(leak[c].get("none", {}).get("by_lang", {}).get(k)) for c in cols]
                 for k in langs]  # fmt: skip
    roles = sorted({k for c in cols for k in over[c]["by_role"]})
    role_rows = [[html.escape(k)] + [_fmt(over[c]["by_role"].get(k)) for c in cols] for k in roles]
    otypes = sorted({k for c in cols for k in over[c]["by_type"]})
    otype_rows = [[html.escape(k)] + [_fmt(over[c]["by_type"].get(k)) for c in cols] for k in otypes]
    plot_cols = [c for c in cols if c in ("none", "system_prompt", "bad_words", "decode_mask", "surface", "all")
                 or c.endswith("@inproc")][:8]  # fmt: skip
    type_plot = _bars("Leak rate per probe type (no attack)", types,
                      {c: [_value(leak[c].get("none", {}).get("by_type", {}).get(k)) for k in types]
                       for c in plot_cols}, "leak rate")  # fmt: skip
    transform_plot = _bars("Leak rate per attack transform", transforms,
                           {c: [_value(leak[c].get(t, {}).get("leak")) for t in transforms] for c in plot_cols},
                           "leak rate")  # fmt: skip
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in meta.get("notes", []))
    skipped = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in meta["skipped"].items())
    col_head = ["", *cols]
    gateways = "; ".join(f"<b>{html.escape(name)}</b>: " + html.escape(", ".join(
        f"{k}={v}" for k, v in body.items() if k not in ("backend", "policies", "status")))
        for name, body in meta.get("gateways_ready", {}).items()) or "n/a"  # fmt: skip
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>quell eval: {html.escape(meta["policy"])}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}}table{{border-collapse:collapse;
margin:1em 0;font-size:13px}}td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top}}th{{background:#f3f3f3}}
small{{color:#666}}code{{background:#f6f6f6}}</style></head><body>
<h1>How well does <code>{html.escape(meta["policy"])}</code> suppress?</h1>
<p>{html.escape(meta["date"])} &middot; model <code>{html.escape(meta["model"])}</code> &middot; greedy,
max_tokens {meta["max_tokens"]} &middot; {meta["n_probes"]} probes, {meta["n_neighbors"]} neighbours,
{meta["n_benign"]} benign prompts &middot; transforms: {html.escape(", ".join(meta["transforms"]))}</p>
<p>Command: <code>{html.escape(meta["command"])}</code></p>
<p>Suppression of outputs, not removal of knowledge: a leak is the probe's answer (normalised match) or a target
term reaching the output. "Term leak (as read)" counts a term from a word edge with any letters glued to its end
("Harry Potterto", "Dumbledore1"), as a person reads it; "term (exact match)" is the surface matcher's own
contract (a word edge at both ends), so it does not judge columns that run the surface layer (n/a there).
Over-blocking: neighbour and benign prompts refused, cut or redacted (for decode-time masks: the unfiltered answer
held a term). Every rate shows k/n and its 95% Wilson interval.</p>
<p>Code: git {html.escape(meta.get("git", ""))}. Gateways said at start (/readyz): {gateways}</p>
<ul>{notes}</ul>{"<p>Skipped columns:</p><ul>" + skipped + "</ul>" if skipped else ""}
<h2>Headline (probes as written)</h2>{_table(head, rows)}
<h2>Leak per attack transform</h2>{_table(["transform", *cols], t_rows)}{transform_plot}
<h2>Leak per probe type (no attack)</h2>{_table(col_head, type_rows)}{type_plot}
<h2>Leak per language (no attack)</h2>{_table(col_head, lang_rows)}
{_protected_section(summary)}
<h2>Over-blocking per role</h2>{_table(col_head, role_rows)}
<h2>Over-blocking per probe type</h2>{_table(col_head, otype_rows)}
<h2>Semantic layers: leak vs over-blocking across thresholds</h2>{_threshold_plot(summary["thresholds"])}
</body></html>"""
