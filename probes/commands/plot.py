"""`solidrl plot RUN_DIR`: one figure of a run's trajectories, predicted beside observed.

    solidrl plot runs/x [--out runs/x/trajectories.png] [--metrics reward/accuracy,entropy/token_mean]

Panels: each metric of --metrics against the step, then, for every observed quantity a predictor
wrote on the rows (`pred/<predictor>/<metric>` beside `<metric>`, docs/metrics.md), the observed
per-step value and every predictor's value on the same axes, and the predicted-vs-observed scatter
with the y = x line (pairs that are exactly 0 throughout, e.g. clip fractions on-policy, are named
in the title instead). Reads only metrics.jsonl, so it works on a run that is still going or was
stopped (incomplete last lines are skipped).
"""
from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

from solidrl.probes.rundir import points, read_rows

from .common import user_errors

DEFAULT_METRICS = ("reward/accuracy", "entropy/token_mean", "kl/ref_exact", "grad/norm")


def predicted_pairs(rows: list[dict]) -> dict[str, list[str]]:
    """Observed metric -> the predictors that wrote `pred/<predictor>/<metric>` on some row."""
    keys = {k for r in rows for k in r}
    out: dict[str, set] = defaultdict(set)
    for k in keys:
        if k.startswith("pred/") and k.count("/") >= 2:
            _, pname, metric = k.split("/", 2)
            if metric in keys:
                out[metric].add(pname)
    return {m: sorted(p) for m, p in sorted(out.items())}


def plot_run(run_dir: Path, out: Path, metrics: tuple[str, ...] = DEFAULT_METRICS) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not (run_dir / "metrics.jsonl").exists():
        raise FileNotFoundError(f"{run_dir} has no metrics.jsonl: not a run directory (make one with solidrl train)")
    rows = read_rows(run_dir)
    if not rows:
        raise FileNotFoundError(f"{run_dir / 'metrics.jsonl'} has no complete row yet")
    shown = [m for m in metrics if points(rows, m)[0]]
    pairs = predicted_pairs(rows)
    # A pair whose observed and predicted values are all exactly 0 (clip fractions on-policy) is a line on
    # the axis: named in the title instead of drawn.
    flat_zero = [m for m, ps in pairs.items()
                 if not any(v for k in (m, *(f"pred/{p}/{m}" for p in ps)) for v in points(rows, k)[1])]
    pairs = {m: ps for m, ps in pairs.items() if m not in flat_zero}
    n = len(shown) + 2 * len(pairs)
    if n == 0:
        raise FileNotFoundError(f"{run_dir}: none of {', '.join(metrics)} and no pred/* keys in the rows")
    cols = 2
    nrows = (n + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 3.2 * nrows), squeeze=False)
    flat = list(axes.flat)
    i = 0
    for m in shown:
        x, y = points(rows, m)
        flat[i].plot(x, y, "o-", ms=3)
        flat[i].set_title(m, fontsize=9)
        flat[i].set_xlabel("step")
        i += 1
    for metric, preds in pairs.items():
        ax, sc = flat[i], flat[i + 1]
        x, y = points(rows, metric)
        ax.plot(x, y, "ko-", ms=3, label="observed")
        allv = list(y)
        for j, p in enumerate(preds):
            px, py = points(rows, f"pred/{p}/{metric}")
            ax.plot(px, py, "--", marker="x", ms=4, color=f"C{j}", label=p)
            obs = dict(zip(x, y))
            both = [(obs[s], v) for s, v in zip(px, py) if s in obs]
            if both:
                sc.scatter([b[0] for b in both], [b[1] for b in both], s=14, color=f"C{j}", label=p)
                allv += [v for b in both for v in b]
        ax.set_title(f"{metric}: observed and predicted per step", fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
        if allv:
            lo, hi = min(allv), max(allv)
            pad = 0.05 * (hi - lo or 1.0)
            sc.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=0.8, label="y = x")
        sc.set_xlabel(f"observed {metric}")
        sc.set_ylabel("predicted")
        sc.set_title(f"{metric}: predicted vs observed", fontsize=9)
        sc.legend(fontsize=7)
        i += 2
    for ax in flat[i:]:
        ax.axis("off")
    title = f"{run_dir} ({len(rows)} steps)"
    if flat_zero:
        title += "\nobserved and predicted exactly 0 on every step: " + ", ".join(flat_zero)
    fig.suptitle(title, fontsize=9)
    # reserve the title's own height (inches per line), not a fraction of the figure: tall figures
    # otherwise get an inch of blank above the first row
    fig.tight_layout(rect=(0, 0, 1, 1 - (0.1 + 0.17 * (title.count("\n") + 1)) / (3.2 * nrows)))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


@user_errors("solidrl plot")
def cmd_plot(args) -> int:
    run_dir = Path(args.run_dir)
    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    out = plot_run(run_dir, Path(args.out) if args.out else run_dir / "trajectories.png", metrics)
    print(f"wrote {out}")
    return 0


HELP = "plot a run's trajectories, every predictor beside what it predicts"


def setup(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a run directory (metrics.jsonl)")
    p.add_argument("--out", default=None, help="PNG path (default: RUN_DIR/trajectories.png)")
    p.add_argument("--metrics", default=",".join(DEFAULT_METRICS),
                   help="comma-separated metrics to plot against the step (absent ones are skipped)")
    p.set_defaults(func=cmd_plot)
