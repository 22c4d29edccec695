"""probe-check's outputs: the terminal table (rich), report.json, report.md and plots/*.png (matplotlib Agg).

The input is the result dict built by probes.check.judge_all: JSON-ready; its 'plot_data'
({prediction index: the arrays its figure needs}) feeds the plots and is left out of report.json
(the arrays are in the run directories' metrics.jsonl). The interval level and the verdict names
come from verdict.py.

Figures, one per prediction:
  ab             the metric's trajectory per arm (mean over seeds, min-max band over seeds), the
                 judged window shaded, and the predicted treatment trajectory when the prediction
                 gives a value (baseline x ratio, or baseline + difference)
  trajectory     observed trajectory vs the predictor's one-step deltas accumulated from the
                 window's first observed value (mean over seeds, band)
  per_step       scatter of predicted vs observed one-step change, with the y = x line
  counterfactual scatter of the baseline update's effect vs the treatment update's effect on the
                 same batch, with y = x and the predicted line
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from solidrl.trainer.io import atomic_write_json, atomic_write_text
from .verdict import VERDICTS, level_text

COLORS = dict(zip(VERDICTS, ("green", "red", "yellow")))


def verdict_text(entry: dict) -> str:
    """The verdict as shown: 'confirmed, not severe' for a confirmation a rival would also get,
    and ', unstable' when the verdict differs between cold starts."""
    v = entry["verdict"]
    if v == "confirmed" and entry.get("severe") is False:
        v = "confirmed, not severe"
    if entry.get("unstable"):
        v += ", unstable"
    return v


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")


def write(result: dict[str, Any], out: Path, plots: bool = True) -> dict[str, Any]:
    """Write report.json, report.md and (unless plots=False) plots/*.png into `out`; returns the JSON dict."""
    out = Path(out)
    files: dict[int, str] = {}
    if plots:
        files = write_plots(result, out / "plots")
    clean = {k: v for k, v in result.items() if k != "plot_data"}
    clean["predictions"] = []
    for e in result["predictions"]:
        e = dict(e)
        if e["index"] in files:
            e["plot"] = files[e["index"]]
        clean["predictions"].append(e)
    atomic_write_json(out / "report.json", _jsonable(clean), allow_nan=False)
    atomic_write_text(out / "report.md", markdown(clean))
    return clean


def _jsonable(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return _jsonable(x.item())
    return x


# ----------------------------------------------------------------------------------------------
# Terminal


WIDE = 120  # columns from which the verdict table has one column per field; narrower, one block per prediction


def _claim(h: dict) -> str:
    """The claim's first sentence on one line (the whole claim is in report.md)."""
    text = " ".join(h["claim"].split())
    m = re.search(r"\.(\s|$)", text)
    return text[:m.start() + 1] if m else text


def _wrap(line: str, width: int, indent: int) -> str:
    """Wrap at `width` on spaces, continuation lines indented by `indent` (a long token is broken)."""
    import textwrap

    return "\n".join(textwrap.wrap(line, width, subsequent_indent=" " * indent, break_on_hyphens=False)) or line


def print_table(result: dict[str, Any], console=None) -> None:
    """The verdicts on the terminal (or a pipe: rich then renders 80 columns, or $COLUMNS).

    At WIDE columns or more, a table with one column per field; narrower, one block per prediction
    (verdict, then label, what was compared, predicted, observed), each line wrapped at the width,
    so a row never breaks into a column of fragments. Notes: each distinct note once, with the
    predictions it belongs to.
    """
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console(highlight=False, emoji=False)
    h = result["hypothesis"]
    preds = result["predictions"]
    s = result["summary"]
    title = _wrap(f"{h['name']}: {_claim(h)}", max(40, console.width), 2)
    console.print(Text(h["name"], style="bold") + Text(title[len(h["name"]):]))
    if console.width >= WIDE:
        t = Table(show_lines=True, expand=False)
        for col in ("#", "prediction", "predicted", f"observed [{level_text()} interval]", "verdict"):
            t.add_column(col, overflow="fold")
        for n, e in enumerate(preds, 1):
            t.add_row(str(n), Text(f"{e['label']}\n{e['kind']}: {e['metric']} ({' vs '.join(e['arms'])})"),
                      Text(e["predicted"]), Text(e["observed"]), Text(verdict_text(e), style=COLORS[e["verdict"]]))
        console.print(t)
    else:
        w = max(40, console.width)
        for n, e in enumerate(preds, 1):
            head = Text(f"{n}. ") + Text(verdict_text(e), style=f"bold {COLORS[e['verdict']]}")
            console.print(head + Text(_wrap(f"{len(head.plain) * 'x'}  {e['label']}", w, 3)[len(head.plain):]))
            console.print(Text(_wrap(f"   {e['kind']} {e['metric']}: {' vs '.join(e['arms'])}", w, 5), style="dim"))
            console.print(Text(_wrap(f"   predicted  {e['predicted']}", w, 14)))
            console.print(Text(_wrap(f"   observed   {e['observed']} ({level_text()} interval)", w, 14)))
    console.print(Text(f"{s['confirmed']} confirmed, {s['refuted']} refuted, {s['inconclusive']} inconclusive"
                       f" ({result['mode']} mode: {result['steps']} steps, seeds {result['seeds']})"))
    for which, n in group_notes(preds):
        console.print(Text(_wrap(f"note ({which}): {n}", max(40, console.width), 2)))
    for r in result["runs"]:
        if r["status"] not in ("finished", "collapsed"):
            console.print(Text(f"run failed: {r['dir']}: {r['reason']}", style="red"))


def group_notes(preds: list[dict]) -> list[tuple[str, str]]:
    """Each distinct note once, in first-seen order, with the predictions (numbered from 1) that carry it:
    [("all", note), ("1, 3", note), ...]."""
    seen: dict[str, list[int]] = {}
    for n, e in enumerate(preds, 1):
        for note in e.get("notes", []):
            seen.setdefault(note, [])
            if n not in seen[note]:
                seen[note].append(n)
    return [("all" if len(ns) == len(preds) > 1 else ", ".join(map(str, ns)), note) for note, ns in seen.items()]


def split_notes(preds: list[dict]) -> tuple[list[str], dict[int, list[str]]]:
    """Notes every prediction carries (said once), and each prediction's own."""
    sets = [e.get("notes", []) for e in preds]
    common = [n for n in (sets[0] if sets else []) if len(sets) > 1 and all(n in x for x in sets)]
    return common, {e["index"]: [n for n in e.get("notes", []) if n not in common] for e in preds}


# ----------------------------------------------------------------------------------------------
# Markdown


def _md_escape(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def markdown(r: dict[str, Any]) -> str:
    h = r["hypothesis"]
    s = r["summary"]
    lines = [f"# probe-check: {h['name']}", "", f"**Claim.** {h['claim']}", ""]
    if h.get("derivation"):
        lines += ["**Derivation.**", "", h["derivation"], ""]
    lines += [f"Mode **{r['mode']}**: {r['steps']} steps, seeds {r['seeds']}; "
              f"**{s['confirmed']} confirmed, {s['refuted']} refuted, {s['inconclusive']} inconclusive** "
              f"(exit code {r['exit_code']})." + (f" Wall time {r['wall_s']} s." if r.get("wall_s") else ""), ""]
    lines += [f"| prediction | kind | predicted | observed [{level_text()} interval] | verdict |", "|---|---|---|---|---|"]
    for e in r["predictions"]:
        lines.append(f"| {_md_escape(e['label'])} | {e['kind']} `{e['metric']}` | {_md_escape(e['predicted'])} | "
                     f"{_md_escape(e['observed'])} | **{verdict_text(e)}** |")
    lines.append("")
    lines += _md_verdict_details(r["predictions"])
    common, own = split_notes(r["predictions"])
    lines += [f"Note (every prediction): {n}" for n in common] + ([""] if common else [])
    for e in r["predictions"]:
        if own[e["index"]] or e.get("note") or e.get("plot"):
            lines.append(f"### {e['label']}")
            if e.get("note"):
                lines += ["", e["note"]]
            lines += [""] * bool(own[e["index"]]) + [f"- {n}" for n in own[e["index"]]]
            if e.get("plot"):
                lines += ["", f"![{e['label']}]({e['plot']})"]
            lines.append("")
    lines += _entries_md(r)
    lines += ["## Runs", "", "| arm | seed | status | wall s | directory |", "|---|---|---|---|---|"]
    for run in r["runs"]:
        st = run["status"] + (f" ({_md_escape(run['reason'])})" if run.get("reason") else "")
        lines.append(f"| {run['arm']} | {run['seed']} | {st} | {run.get('wall_s', '')} | `{run['dir']}` |")
        for cf in run.get("counterfactual", []):
            lines.append(f"| ↳ counterfactual {cf['treatment']} | {run['seed']} | {cf['batch_matches']}/{cf['steps']} "
                         f"batches identical | | `{cf['dir']}` |")
    m = r["method"]
    lines += ["", (f"Intervals at the {level_text(m['confidence'])} level; default method {m['default_interval']} "
                  f"(Student t over per-seed statistics); bootstrap methods: {m['bootstrap_resamples']} resamples, "
                  f"numpy seed {m['rng_seed']} (deterministic). Cold starts: {r.get('cold_start', 'shared')}. "
                  "confirmed = interval inside the prediction, refuted = outside, inconclusive = straddles; "
                  "not severe = a rival or the no-effect value would be confirmed as well."), ""]
    return "\n".join(lines)


def _entries_md(r: dict[str, Any]) -> list[str]:
    """The arms' parametrized or plugin entries and the plugin files (docs/plugins.md)."""
    rows = [(arm, e) for arm, es in (r.get("entries") or {}).items() for e in es]
    out = []
    if rows:
        out += ["## Entries and parameters", "", "| arm | field | entry | parameters | from |", "|---|---|---|---|---|"]
        for arm, e in rows:
            ps = ", ".join(f"{k} = {v!r}" for k, v in e["params"].items()) or "none"
            out.append(f"| {arm} | `{e['field']}` | {e['name']} | {_md_escape(ps)} | {_md_escape(e['origin'])} |")
        out.append("")
    if r.get("plugins"):
        out += ["## Plugins", ""] + [f"- `{p['path']}` sha256 `{p['sha256']}`" for p in r["plugins"]] + [""]
    return out


def _md_verdict_details(preds: list[dict]) -> list[str]:
    """Severity, per-step skill and per-cold-start verdicts, one line each per prediction that has them."""
    lines = []
    for e in preds:
        parts = []
        if e.get("severe") is not None:
            parts.append(f"{'severe' if e['severe'] else 'not severe'}: {e['severity_reason']}")
        sk = e.get("skill")
        if sk:
            f = lambda x: "nan" if x is None else f"{x:.3g}"
            parts.append(f"per-step skill {f(sk['value'])} [{f(sk['interval'][0])}, {f(sk['interval'][1])}]"
                         + (" (says nothing beyond its average)" if sk["says_nothing_beyond_average"] else ""))
        if e.get("start"):
            parts.append(e["start"])
        if e.get("by_cold_start"):
            cs = "; ".join(f"cold start {x['cold_start']}: {x['verdict']}" for x in e["by_cold_start"])
            parts.append(("**unstable** across cold starts (" if e.get("unstable") else "by cold start (") + cs + ")")
        if parts:
            lines.append(f"- **{_md_escape(e['label'])}**: " + "; ".join(_md_escape(x) for x in parts))
    return lines + ([""] if lines else [])


# ----------------------------------------------------------------------------------------------
# Plots


def _band(ax, x, arr, label, color, ls="-"):
    a = np.asarray(arr, float)
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            m, lo, hi = np.nanmean(a, 0), np.nanmin(a, 0), np.nanmax(a, 0)
    ax.plot(x, m, ls, color=color, label=label)
    if a.shape[0] > 1:
        ax.fill_between(x, lo, hi, color=color, alpha=0.2, linewidth=0)


def write_plots(result: dict[str, Any], d: Path) -> dict[int, str]:
    """One PNG per prediction that has plot data; returns {prediction index: path relative to the report}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d.mkdir(parents=True, exist_ok=True)
    files = {}
    plot_data = result.get("plot_data", {})
    for e in result["predictions"]:
        pd = plot_data.get(e["index"])
        if not pd:
            continue
        fig, ax = plt.subplots(figsize=(6, 4.2), dpi=110)
        try:
            _draw(ax, e, pd)
            ax.set_title(f"{e['label']} — {verdict_text(e)}", fontsize=9, color={"confirmed": "darkgreen",
                         "refuted": "darkred"}.get(e["verdict"], "black"))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
            name = f"{e['index']:02d}_{pd['type']}_{_safe(e['metric'])}.png"
            fig.tight_layout()
            fig.savefig(d / name)
            files[e["index"]] = f"plots/{name}"
        finally:
            plt.close(fig)
    return files


def _role(arm: str, role: str) -> str:
    return arm if arm == role else f"{arm} ({role})"


def _draw(ax, e: dict, pd: dict) -> None:
    t = pd["type"]
    if t == "ab":
        b, tr = np.asarray(pd["baseline"], float), np.asarray(pd["treatment"], float)
        x = np.arange(b.shape[1])
        _band(ax, x, b, _role(pd["arms"][0], "baseline"), "tab:blue")
        _band(ax, x, tr, _role(pd["arms"][1], "treatment"), "tab:orange")
        crit = e.get("criteria", [])
        if crit and crit[0]["name"] in ("ratio", "difference") and crit[0]["allowed"][0] is not None \
                and crit[0]["allowed"][1] is not None:
            v = (crit[0]["allowed"][0] + crit[0]["allowed"][1]) / 2
            pt = b * v if crit[0]["name"] == "ratio" else b + v
            _band(ax, x, pt, "predicted treatment", "tab:green", "--")
        w = pd["window"]
        ax.axvspan(w[0] - 0.5, w[1] - 0.5, color="grey", alpha=0.08, label="judged window")
        ax.set_xlabel("step")
        ax.set_ylabel(pd["metric"])
    elif t == "trajectory":
        o = np.asarray(pd["observed"], float)
        x = np.arange(o.shape[1])
        _band(ax, x, o, f"observed {pd['metric']}", "tab:blue")
        p = np.asarray(pd["predicted"], float)
        _band(ax, np.arange(pd["start"], pd["start"] + p.shape[1]), p, f"accumulated {pd['pred_key']}",
              "tab:green", "--")
        ax.set_xlabel("step")
        ax.set_ylabel(pd["metric"])
    elif t in ("scatter", "cf"):
        if t == "scatter":
            xs, ys = np.asarray(pd["predicted"], float), np.asarray(pd["observed"], float)
            xl, yl = f"predicted ({pd['xlabel']})", f"observed ({pd['ylabel']})"
        else:
            xs, ys = np.asarray(pd["baseline"], float), np.asarray(pd["treatment"], float)
            xl, yl = f"{pd['metric']}: {pd['arms'][0]} update", f"{pd['metric']}: {pd['arms'][1]} update (same batch)"
        ok = np.isfinite(xs) & np.isfinite(ys)
        xs, ys = xs[ok], ys[ok]
        ax.scatter(xs, ys, s=10, alpha=0.6)
        if xs.size:
            lo, hi = float(min(xs.min(), ys.min())), float(max(xs.max(), ys.max()))
            pad = 0.05 * (hi - lo or 1.0)
            line = np.array([lo - pad, hi + pad])
            ax.plot(line, line, "k--", lw=1, label="y = x")
            if t == "cf" and pd.get("value") is not None and pd.get("compare") in ("ratio", "difference"):
                v = pd["value"]
                ax.plot(line, line * v if pd["compare"] == "ratio" else line + v, "g:", lw=1.2,
                        label=f"predicted ({pd['compare']} {v:.3g})")
        ax.set_xlabel(xl, fontsize=8)
        ax.set_ylabel(yl, fontsize=8)
