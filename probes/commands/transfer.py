"""The transfer table: do the predictors hold across model sizes, from nano to a real pretrained LM?

    solidrl transfer [--models nano,micro,small,smollm2-135m] [--n 8] [--out runs/transfer] [--set k=v ...]

For each model, N counterfactual steps (probes/counterfactual.py) from the same weights
on N real rollout batches, each at a learning rate eta, eta/2 and eta/4, with the probes' recorder
attached (the JVP, jvp1s, jvp2 and jvp3 from one third-order nested pass on every step; on a big model
`--set probes.jvp_mode=fd` takes dz2, dz3 from two forwards instead, or `--set probes.jvp3_every=0` keeps the
second-order pass: a nested jvp3 costs 8 bare SmolLM2 steps, bench/jvp_cost.py). eta is calibrated per model
(--target-kl, default 0.01) so that the first batch's JVP-predicted kl/step is the same on every model: the
first-order predictors' error grows with the step's size in nats, and one lr is a very different step on
different models. Per
predictor output with an observed counterpart it reports, over the N batches at eta:
  median relative error   median_b |pred - obs| / |obs|
  Pearson r               of pred and obs over the batches
  sign agreement          share of batches with sign(pred) = sign(obs)
  residual ratio          median_b |obs - pred|(eta) / |obs - pred|(eta/2)
  residual order          median_b log2 of that ratio, at eta -> eta/2 and eta/2 -> eta/4 (theory.kernel
                          residual_order), beside the k + 1 a k-th order predictor's residual must reach
                          (theory.kernel.ORDERS: jvp dH 2, KL 3; jvp2 dH 3, KL 4; jvp3 dH 4, KL 5): the first-order JVP's dH
                          ratio of ~2.5-3 is not "first order off" (its first-order term is exact) but a
                          residual not yet in its asymptotic regime at eta, which the eta/4 slope shows;
                          only for quantities that scale with eta (not for the gradient-norm ratio)
  noise floor             the observed quantity when nothing should change: the same step at lr = 0
                          (the training forward and the probe's forward of unchanged weights), so a
                          prediction error below it is measurement noise, not a failed prediction
Pairs: pred/<p>/entropy/delta and pred/<p>/kl/step against the probes' entropy/delta and kl/step;
GRPO's gradient-norm ratio against ||g_grpo|| / ||g_rloo|| on the same batch and weights (one extra
backward with algo.advantage = rloo); the clip fraction against the share of tokens a second pass
over the batch (epochs = 2) would clip, whose ratio pi_new / pi_old exists after the step (the
on-policy first pass has ratio exactly 1): the predictor sees only the log-ratios' mean and spread.

The residual's decomposition (decomposition()): per model and metric, the share of the observed value in
the first order (jvp), the softmax's nonlinearity (jvp1s - jvp), the logits' curvature (jvp2 - jvp1s), the
third-order logits (jvp3 - jvp2) and the rest (observed - jvp3).
Writes to --out: table.md, report.json, plots/<predictor>__<metric>.png (predicted vs observed, every
model, y = x), <model>/rows.jsonl (every step's row). docs/transfer.md quotes the table.
Left out: more than one step (trajectories are probe-check's), learning-rate sweeps beyond eta/2.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from solidrl.theory.kernel import ORDERS, residual_order
from solidrl.trainer.config import TrainConfig, apply_overrides, parse_set_args

from .common import user_errors

MODELS: dict[str, dict[str, Any]] = {
    "nano": {"model.size": "nano", "task.name": "addition"},
    "micro": {"model.size": "micro", "task.name": "addition"},
    "small": {"model.size": "small", "task.name": "addition"},
    "smollm2-135m": {"model.path": "smollm2-135m", "task.name": "chat_addition",
                     "rollout.prompts_per_step": 8, "rollout.group_size": 4, "optim.lr": 1e-5},
}
"""Model -> config overrides. Named sizes keep the trainer's batch (64 prompts x 8), cold start and lr
(3e-4). SmolLM2 takes lr 1e-5: at 3e-4 one fresh-AdamW step moves it by kl/step = 1.9 nats per token
and the JVP's first order predicts 13 (far outside the linear regime); at 1e-5, kl/step = 0.013 and
the JVP's entropy/delta is within 8% with a residual ratio of 4.4 (one batch, measured)."""

PROBES = {"probes.jvp_every": 1, "probes.jvp2_every": 1, "probes.jvp3_every": 1, "probes.save_stats": False, "probes.groups": "step,grad,pred",
          "probes.max_states": 0}
OBSERVED = ("entropy/delta", "kl/step")
RATIO_KEY = ("grad/norm_ratio_vs_rloo", "grpo_gradnorm_ratio")
CLIP_KEY = ("ratio/clip_frac", "clip_frac")


# ----------------------------------------------------------------------------------------------
# Running one model


class _SecondPass:
    """step_end hook: the ratio pi_new / pi_old a second pass over the batch would see, and its clip share."""

    def __init__(self):
        self.on = False

    @torch.no_grad()
    def __call__(self, ctx) -> None:
        if not self.on:
            return
        from solidrl.theory.predictors import PREDICTORS
        from solidrl.trainer.algos import gather_logprobs
        from solidrl.trainer.rollout import response_logits

        from solidrl.probes import metrics as M
        from solidrl.probes.recorder import run_scalars

        ro = ctx.rollout
        m = ctx.mask > 0
        new = gather_logprobs(response_logits(ctx.model, ro).double(), ro.response_ids)
        log_ratio = (new - ctx.old_logp.double())[m]
        adv = ctx.advantages[:, None].expand_as(m)[m].double()
        a = ctx.cfg.algo
        obs = M.ratio_stats(log_ratio, adv, a.eps_low, a.eps_high, a.dual_clip_c)
        pred = PREDICTORS.get("clip_frac")({"log_ratio": log_ratio, "adv": adv, **run_scalars(ctx.cfg)})
        if "clip_frac" in obs and "ratio/clip_frac" in pred:
            ctx.metrics["second_pass/clip_frac"] = obs["clip_frac"]
            ctx.metrics["pred/clip_frac/second_pass/clip_frac"] = pred["ratio/clip_frac"]


JVP_ORDER = {"entropy/delta": 1, "kl/step": 2}
"""The JVP predictor's outputs are homogeneous in the update: dz = J dtheta, and a fresh optimizer's
first step is proportional to eta (SGD; Adam(W): -eta g / (|g| + eps)), so its eta/2 prediction is the
eta one times (1/2)^order. The eta/2 arm skips the JVP (a third of a step's cost on smollm2); measured
on nano, the recomputed ratios are 2 and 4 to 1e-5."""


def calibrated_lr(eta0: float, pred_kl: float, target_kl: float) -> float:
    """The learning rate whose fresh-AdamW first step has first-order KL `target_kl`.

    The step is dtheta = -eta (g / (|g| + eps) + wd theta), proportional to eta, so the JVP's
    KL(pi_old || pi_new) ~ Var_pi(J dtheta) / 2 scales as eta^2: eta = eta0 sqrt(target / pred(eta0)).
    """
    if not (pred_kl > 0 and math.isfinite(pred_kl)):
        from solidrl.trainer.config import ConfigError

        raise ConfigError(f"cannot calibrate the learning rate: the JVP's predicted kl/step at lr {eta0:g} is "
                         f"{pred_kl!r}; pass --target-kl 0 to use the configured lr")
    return eta0 * math.sqrt(target_kl / pred_kl)


def run_model(name: str, n: int, out: Path, overrides: dict[str, Any], progress: bool = True,
              noise_batches: int = 2, target_kl: float = 0.0) -> dict[str, Any]:
    """N batches x (eta, eta/2, rloo) one-step updates of one model, plus lr = 0 on the first
    `noise_batches` batches (the noise floor); returns the rows of every arm and the timing.

    target_kl > 0: eta is set so that the first batch's JVP-predicted kl/step is target_kl (one
    calibration step at the configured lr first), so that every model is compared at the same
    per-token step size: the first-order predictors' error grows with kl/step (hypotheses/07), and a
    fixed lr is a very different step on different models (3e-4 is kl/step ~0.05 on nano, ~0.5 on
    micro, ~2 on SmolLM2)."""
    from solidrl.trainer.loop import Trainer
    from solidrl.trainer.model import count_params

    from solidrl.probes.counterfactual import CounterfactualSteps, fingerprint
    from solidrl.probes.probeset import attach_probes

    t0 = time.perf_counter()
    over = {**MODELS[name], **PROBES, **overrides, "run.steps": n}  # --set wins (e.g. probes.jvp3_every=0 on a big model)
    cfg = apply_overrides(TrainConfig(), over)
    d = out / name
    trainer = Trainer(cfg, d, progress=progress)
    rec = attach_probes(trainer).recorder  # PROBES's groups: the recorder alone
    second = _SecondPass()
    trainer.add_hook("step_end", second)
    fp: dict[int, set] = {}
    trainer.add_hook("step_end", lambda ctx: fp.setdefault(ctx.step, set()).add(fingerprint(ctx.rollout)))
    one = CounterfactualSteps(trainer)
    jvp2_every, jvp3_every = rec.jvp2_every, rec.jvp3_every
    eta = eta0 = cfg.optim.lr
    if target_kl > 0:
        eta = calibrated_lr(eta0, float(one.step(0, eta0).get("pred/jvp/kl/step", math.nan)), target_kl)
        if progress:
            print(f"transfer {name}: lr {eta0:g} -> {eta:.3g} for a predicted kl/step of {target_kl:g}",
                  file=sys.stderr, flush=True)
    t_setup = time.perf_counter() - t0
    arms: dict[str, list[dict]] = {"eta": [], "half": [], "quarter": [], "zero": [], "rloo": []}
    with open(d / "rows.jsonl", "w") as f:
        for b in range(n):
            tb = time.perf_counter()
            second.on = True
            arms["eta"].append(one.step(b, eta))
            second.on = False
            rec.jvp_every = 0  # eta/2, eta/4: jvp2 (not homogeneous) runs again; JVP scaled (JVP_ORDER) if absent
            for arm, frac in (("half", 0.5), ("quarter", 0.25)):
                row = one.step(b, eta * frac)
                for m, k in JVP_ORDER.items():
                    if f"pred/jvp/{m}" in arms["eta"][-1] and f"pred/jvp/{m}" not in row:
                        row[f"pred/jvp/{m}"] = arms["eta"][-1][f"pred/jvp/{m}"] * frac ** k
                arms[arm].append(row)
            rec.jvp2_every = rec.jvp3_every = 0  # lr 0: observed side only
            if b < noise_batches:
                arms["zero"].append(one.step(b, 0.0))
            rec.jvp_every, rec.jvp2_every, rec.jvp3_every = 1, jvp2_every, jvp3_every
            arms["rloo"].append(one.step(b, overrides={"algo.advantage": "rloo"}, hooks=False))
            for arm, rows in arms.items():
                if len(rows) == b + 1:
                    f.write(json.dumps({"arm": arm, "batch": b, **rows[-1]}) + "\n")
            f.flush()
            if progress:
                r = arms["eta"][-1]
                print(f"transfer {name}: batch {b + 1}/{n} acc {r['reward/accuracy']:.3f} "
                      f"dH {r.get('entropy/delta', math.nan):+.3g} ({time.perf_counter() - tb:.1f} s)",
                      file=sys.stderr, flush=True)
    one.reset()
    mixed = [len(v) == 1 for v in fp.values()]
    return {
        "model": name, "params": count_params(trainer.model), "task": cfg.task.name,
        "batch": f"{cfg.rollout.prompts_per_step} x {cfg.rollout.group_size}", "lr": eta, "lr_configured": eta0,
        "target_kl": target_kl,
        "optimizer": cfg.optim.name, "n": n, "same_batch_all_arms": all(mixed),
        "accuracy_mean": float(np.mean([r["reward/accuracy"] for r in arms["eta"]])),
        "wall_s": round(time.perf_counter() - t0, 1), "setup_s": round(t_setup, 1),
        "arms": arms,
    }


# ----------------------------------------------------------------------------------------------
# Scoring


def _pairs(res: dict[str, Any]) -> dict[tuple[str, str], dict[str, np.ndarray]]:
    """(predictor, metric) -> arrays pred/obs at eta and eta/2, and the lr-0 noise of the observed side."""
    A = res["arms"]
    out: dict[tuple[str, str], dict[str, np.ndarray]] = {}

    def col(rows, key):
        return np.array([r.get(key, math.nan) for r in rows], dtype=float)

    keys = sorted({k for r in A["eta"] for k in r if k.startswith("pred/")})
    for k in keys:
        pname, metric = k.split("/", 2)[1:]
        if metric in OBSERVED:
            out[(pname, metric)] = {"pred": col(A["eta"], k), "obs": col(A["eta"], metric),
                                    "pred_half": col(A["half"], k), "obs_half": col(A["half"], metric),
                                    "noise": np.abs(col(A["zero"], metric))}
            if A.get("quarter"):
                out[(pname, metric)].update(pred_quarter=col(A["quarter"], k), obs_quarter=col(A["quarter"], metric))
        elif metric == "second_pass/clip_frac":
            out[(pname, metric)] = {"pred": col(A["eta"], k), "obs": col(A["eta"], metric),
                                    "noise": np.zeros(len(A["eta"]))}
    g_grpo, g_rloo, g_zero = col(A["eta"], "grad/norm"), col(A["rloo"], "grad/norm"), col(A["zero"], "grad/norm")
    g_grpo0 = g_grpo[:len(g_zero)]
    k = f"pred/{RATIO_KEY[1]}/{RATIO_KEY[0]}"
    if any(k in r for r in A["eta"]):
        out[(RATIO_KEY[1], RATIO_KEY[0])] = {"pred": col(A["eta"], k), "obs": g_grpo / g_rloo,
                                             "noise": np.abs(g_grpo0 / g_zero - 1)}
    return out


def score(p: dict[str, np.ndarray]) -> dict[str, Optional[float]]:
    """The table's numbers for one (model, predictor, metric); None where not computable."""
    pred, obs = p["pred"], p["obs"]
    ok = np.isfinite(pred) & np.isfinite(obs)
    pred, obs = pred[ok], obs[ok]

    def f(x):
        return None if x is None or not np.isfinite(x) else float(x)

    rel = np.abs(pred - obs)[obs != 0] / np.abs(obs[obs != 0])
    r = None
    if len(pred) >= 3 and np.std(pred) > 0 and np.std(obs) > 0:
        r = float(np.corrcoef(pred, obs)[0, 1])
    resid = None
    if "pred_half" in p:
        num, den = np.abs(p["obs"] - p["pred"]), np.abs(p["obs_half"] - p["pred_half"])
        good = np.isfinite(num) & np.isfinite(den) & (den > 0)
        resid = float(np.median(num[good] / den[good])) if good.any() else None
    orders = [None, None]
    if "pred_half" in p:
        levels = [np.abs(p["obs"] - p["pred"]), np.abs(p["obs_half"] - p["pred_half"])]
        if "pred_quarter" in p:
            levels.append(np.abs(p["obs_quarter"] - p["pred_quarter"]))
        for i in range(len(levels) - 1):
            sl = np.array([residual_order([a, b])[0] for a, b in zip(levels[i], levels[i + 1])])
            orders[i] = float(np.median(sl[np.isfinite(sl)])) if np.isfinite(sl).any() else None
    return {
        "n": int(ok.sum()),
        "median_rel_error": f(np.median(rel)) if rel.size else None,
        "pearson_r": f(r),
        "sign_agreement": f(np.mean(np.sign(pred) == np.sign(obs))) if ok.any() else None,
        "residual_ratio": f(resid),
        "residual_order": orders[0], "residual_order_quarter": orders[1],
        "median_abs_obs": f(np.median(np.abs(obs))) if ok.any() else None,
        "noise_floor": f(np.median(p["noise"][np.isfinite(p["noise"])])) if np.isfinite(p["noise"]).any() else None,
    }


def _fmt(x: Optional[float], kind: str = "g") -> str:
    if x is None:
        return "n/a"
    if kind == "pct":
        return f"{100 * x:.0f}%"
    if kind == "2f":
        return f"{x:.2f}"
    if kind == "3f":
        return f"{x:.3f}"
    if kind == "1f":
        return f"{x:.1f}"
    if kind == "pct2":
        return f"{100 * x:.1f}%"
    return f"{x:.2g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.1e}"


def table(report: dict[str, Any]) -> str:
    lines = [
        "| model | predictor | metric | median rel. err | Pearson r | sign agr. | resid. ratio eta->eta/2 "
        "| resid. order eta->eta/2->eta/4 (k+1) | median abs obs | noise floor |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        s = row["score"]
        k = ORDERS.get(row["predictor"], {}).get(row["metric"])
        order = (f"{_fmt(s.get('residual_order'), '1f')}, {_fmt(s.get('residual_order_quarter'), '1f')}"
                 + (f" ({k + 1})" if k is not None else ""))
        lines.append(
            f"| {row['model']} | {row['predictor']} | {row['metric']} | {_fmt(s['median_rel_error'], 'pct2')} | "
            f"{_fmt(s['pearson_r'], '3f')} | {_fmt(s['sign_agreement'], 'pct')} | {_fmt(s['residual_ratio'], '2f')} | "
            f"{order} | {_fmt(s['median_abs_obs'])} | {_fmt(s['noise_floor'])} |")
    return "\n".join(lines)


DECOMPOSITION = (("first order", None, "jvp"), ("softmax nonlinearity", "jvp", "jvp1s"),
                 ("logit curvature", "jvp1s", "jvp2"), ("third-order logits", "jvp2", "jvp3"), ("rest", "jvp3", None))
"""The residual's decomposition (theory.kernel.derive_jvp1s, derive_jvp3): observed = jvp + (jvp1s - jvp) +
(jvp2 - jvp1s) + (jvp3 - jvp2) + (observed - jvp3). Each term: (upper - lower), None = 0 below / observed above."""


def decomposition(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (model, metric): each DECOMPOSITION term over the batches at eta, as a share of the observed value:
    median_b term_b / obs_b (signed; the shares of one batch add up to 1). Without jvp3 the third-order share
    is None and the rest is obs - jvp2; no entry without jvp, jvp1s and jvp2."""
    by = {(r["model"], r["predictor"], r["metric"]): r for r in rows}
    out = []
    for model, metric in sorted({(r["model"], r["metric"]) for r in rows if r["metric"] in OBSERVED}):
        got = {p: np.array(by[(model, p, metric)]["pred"], dtype=float) for p in ("jvp", "jvp1s", "jvp2", "jvp3")
               if (model, p, metric) in by}
        if not {"jvp", "jvp1s", "jvp2"} <= set(got):
            continue
        obs = np.array(by[(model, "jvp", metric)]["obs"], dtype=float)
        ok = np.isfinite(obs) & (obs != 0)
        shares = {}
        top = "jvp3" if "jvp3" in got else "jvp2"  # without jvp3 (probes.jvp3_every = 0) the rest is obs - jvp2
        for label, lo, hi in DECOMPOSITION:
            if "jvp3" not in got and "jvp3" in (lo, hi):
                shares[label] = None if hi == "jvp3" else float(np.median((obs[ok] - got[top][ok]) / obs[ok]))
                continue
            term = (obs if hi is None else got[hi]) - (0.0 if lo is None else got[lo])
            v = term[ok] / obs[ok]
            shares[label] = float(np.median(v)) if v.size else None
        out.append({"model": model, "metric": metric, "shares": shares,
                    "median_abs_obs": float(np.median(np.abs(obs[ok]))) if ok.any() else None})
    return out


def decomposition_table(dec: list[dict[str, Any]]) -> str:
    if not dec:
        return ""
    labels = [d[0] for d in DECOMPOSITION]
    lines = ["| model | metric | " + " | ".join(labels) + " | median abs obs |", "|---|---|" + "---|" * (len(labels) + 1)]
    for d in dec:
        lines.append(f"| {d['model']} | {d['metric']} | " + " | ".join(_fmt(d["shares"][k], "pct2") for k in labels)
                     + f" | {_fmt(d['median_abs_obs'])} |")
    return "\n".join(lines)


def _symlog_ticks(thr: float, lo: float, hi: float) -> list[float]:
    """0 and the decades at or beyond the linear threshold that the data [lo, hi] reach, per sign: the
    default symlog ticks also put +-thr one decade beside 0, where their labels overlap."""
    def decades(vmax: float) -> list[float]:
        if vmax < thr:
            return []
        return [10.0 ** k for k in range(math.ceil(math.log10(thr)), math.ceil(math.log10(vmax)) + 1)]
    return [-x for x in reversed(decades(-lo))] + [0.0] + decades(hi)


def plots(report: dict[str, Any], pairs: dict[str, dict], out: Path) -> list[str]:
    """One figure per (predictor, metric): predicted vs observed at eta (filled) and eta/2 (open), y = x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []
    keys = sorted({k for m in pairs.values() for k in m})
    for key in keys:
        fig, ax = plt.subplots(figsize=(4.8, 4.4))
        allv = []
        for i, (model, mp) in enumerate(pairs.items()):
            if key not in mp:
                continue
            p = mp[key]
            c = f"C{i}"
            ax.scatter(p["obs"], p["pred"], color=c, s=18, label=model)
            allv += [*p["obs"], *p["pred"]]
            if "pred_half" in p:
                ax.scatter(p["obs_half"], p["pred_half"], facecolors="none", edgecolors=c, s=18)
                allv += [*p["obs_half"], *p["pred_half"]]
        v = np.array([x for x in allv if np.isfinite(x)])
        if not v.size:
            plt.close(fig)
            continue
        lo, hi = float(v.min()), float(v.max())
        pad = 0.05 * (hi - lo or 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=0.8, label="y = x")
        nz = np.abs(v[v != 0])
        if nz.size and nz.max() / nz.min() > 100:
            thr = float(np.quantile(nz, 0.1))
            ax.set_xscale("symlog", linthresh=thr)
            ax.set_yscale("symlog", linthresh=thr)
            ticks = _symlog_ticks(thr, lo, hi)
            ax.set_xticks(ticks)
            ax.set_yticks(ticks)
        ax.set_xlabel(f"observed {key[1]}")
        ax.set_ylabel(f"predicted ({key[0]})")
        ax.set_title(f"{key[0]}: {key[1]}\nfilled: eta, open: eta/2", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"{key[0]}__{key[1].replace('/', '_')}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path))
    return written


def run_transfer(models: list[str], n: int, out: Path, overrides: dict[str, Any], progress: bool = True,
                 command_line: str = "", noise_batches: int = 2, target_kl: float = 0.0) -> dict[str, Any]:
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    results, pairs = [], {}
    for name in models:
        res = run_model(name, n, out, overrides, progress, noise_batches, target_kl)
        results.append(res)
        pairs[name] = _pairs(res)
    rows = [{"model": m, "predictor": k[0], "metric": k[1], "score": score(p),
             "pred": p["pred"].tolist(), "obs": p["obs"].tolist(),
             **{k: p[k].tolist() for k in ("pred_half", "obs_half", "pred_quarter", "obs_quarter") if k in p},
             "noise": p["noise"].tolist()}
            for m, mp in pairs.items() for k, p in sorted(mp.items())]
    report = {
        "command": command_line, "threads": torch.get_num_threads(),
        "models": [{k: v for k, v in r.items() if k != "arms"} for r in results],
        "rows": rows, "wall_s": round(time.perf_counter() - t0, 1),
    }
    report["decomposition"] = decomposition(rows)
    report["plots"] = plots(report, pairs, out / "plots")
    md = ["# Transfer table", "", f"Command: `{command_line}`", "",
          "| model | params | task | batch | lr (eta) | mean accuracy | wall s |", "|---|---|---|---|---|---|---|"]
    md += [f"| {m['model']} | {m['params'] / 1e6:.2f}M | {m['task']} | {m['batch']} | {m['lr']:.3g} | "
           f"{m['accuracy_mean']:.3f} | {m['wall_s']:.0f} |" for m in report["models"]]
    tk = report["models"][0]["target_kl"] if report["models"] else 0
    md += ["", (f"lr (eta) is calibrated per model so that the first batch's JVP-predicted kl/step is {tk:g} "
                "(--target-kl); the same per-token step size on every model." if tk else
                "lr (eta) is the configured one (--target-kl 0).")]
    md += ["", f"N = {n} batches per model; total wall time {report['wall_s']:.0f} s "
           f"({report['threads']} torch threads).", "", table(report), ""]
    if report["decomposition"]:
        md += ["## The residual's decomposition", "",
               "Each term as a share of the observed value (median over the batches at eta; one batch's shares add "
               "up to 100%): observed = jvp + (jvp1s - jvp) + (jvp2 - jvp1s) + (jvp3 - jvp2) + (observed - jvp3). "
               "First order: the JVP's Taylor terms; softmax nonlinearity: the exact softmax on the same first-order "
               "logits; logit curvature: what dz2/2 adds; third-order logits: dz3/6; rest: what jvp3 misses.", "",
               decomposition_table(report["decomposition"]), ""]
    (out / "table.md").write_text("\n".join(md))
    (out / "report.json").write_text(json.dumps(report, indent=1))
    return report


# ----------------------------------------------------------------------------------------------
# CLI


@user_errors("solidrl transfer")
def cmd_transfer(args) -> int:
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        from solidrl.trainer.config import ConfigError

        raise ConfigError(f"--models: unknown model {unknown[0]!r}; known: {', '.join(MODELS)}")
    if not (args.target_kl >= 0 and math.isfinite(args.target_kl)):
        from solidrl.trainer.config import ConfigError

        raise ConfigError(f"--target-kl must be a finite number >= 0, got {args.target_kl}")
    if args.n < 1:
        from solidrl.trainer.config import ConfigError

        raise ConfigError(f"--n must be >= 1, got {args.n}")
    over = parse_set_args(args.set or [])
    cmdline = "solidrl transfer " + " ".join(sys.argv[2:]) if args.command_line is None else args.command_line
    rep = run_transfer(models, args.n, Path(args.out), over, progress=not args.quiet, command_line=cmdline,
                       noise_batches=args.noise_batches, target_kl=args.target_kl)
    print(table(rep))
    if rep["decomposition"]:
        print("\nresidual decomposition (share of observed):\n" + decomposition_table(rep["decomposition"]))
    print(f"\nwrote {Path(args.out) / 'table.md'}, report.json, {len(rep['plots'])} plots; {rep['wall_s']:.0f} s")
    return 0


HELP = "predicted vs observed one-step changes across model sizes (the transfer table)"


def setup(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    p.add_argument("--n", type=int, default=8, help="batches (counterfactual steps) per model and learning rate")
    p.add_argument("--out", default="runs/transfer", help="output folder")
    p.add_argument("--noise-batches", type=int, default=2, help="batches that also run at lr = 0 (the noise floor)")
    p.add_argument("--target-kl", type=float, default=0.01,
                   help="set each model's lr so one step's JVP-predicted kl/step is this (one calibration "
                        "step at the configured lr); 0 keeps the configured lr")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="config override for every model, e.g. --set rollout.prompts_per_step=16 (repeatable)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--command-line", default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_transfer)
