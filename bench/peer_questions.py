"""Figures for docs/peer-questions.md from real nano runs (CPU, a few minutes).

    python bench/peer_questions.py --runs /tmp/peerq [--train]   # --train makes the runs first

Runs (under --runs): default (40 steps, 32 prompts x 8), topp (top_p 0.9, 8 steps), topp_stale (top_p 0.9,
staleness 2, 12 steps),
bonus_ok / bonus_cut (entropy_coef 0.01, 8 steps; bonus_cut with entropy_from_logits detached: TRL #5595).
Writes docs/figures/peer_questions.png and prints the numbers the page quotes.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rows(d: Path) -> list[dict]:
    return [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines() if x.strip()]


def train(runs: Path) -> None:
    exe = str(ROOT / ".venv/bin/solidrl")
    sets = lambda **kw: [x for k, v in kw.items() for x in ("--set", f"{k}={v}")]  # noqa: E731
    subprocess.run([exe, "train", "--quiet", "--out", str(runs / "default"), "--steps", "40",
                    *sets(**{"rollout.prompts_per_step": 32, "probes.save_stats": "false"})], check=True)
    subprocess.run([exe, "train", "--quiet", "--out", str(runs / "topp_stale"), "--steps", "12",
                    *sets(**{"rollout.prompts_per_step": 16, "rollout.top_p": 0.9, "offpolicy.staleness": 2,
                             "probes.save_stats": "false"})], check=True)
    subprocess.run([exe, "train", "--quiet", "--out", str(runs / "topp"), "--steps", "8",
                    *sets(**{"rollout.prompts_per_step": 16, "rollout.top_p": 0.9, "probes.groups": "adv,mismatch",
                             "probes.save_stats": "false"})], check=True)
    bonus(runs / "bonus_ok", cut=False)
    bonus(runs / "bonus_cut", cut=True)


def bonus(out: Path, cut: bool) -> None:
    from solidrl.probes.commands.cli import main
    from solidrl.trainer import algos

    orig = algos.entropy_from_logits
    if cut:
        algos.entropy_from_logits = lambda z: orig(z).detach()
    try:
        main(["train", "--quiet", "--overwrite", "--out", str(out), "--steps", "8", "--set", "rollout.prompts_per_step=16",
              "--set", "algo.entropy_coef=0.01", "--set", "probes.groups=adv,grad", "--set", "probes.save_stats=false"])
    finally:
        algos.entropy_from_logits = orig


def plot(runs: Path, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 2, figsize=(11, 7.5))
    a = ax[0, 0]
    for name, style in (("bonus_ok", "-"), ("bonus_cut", "--")):
        rs = rows(runs / name)
        for term, c in (("pg", "C0"), ("entropy_bonus", "C3")):
            a.semilogy([r["step"] for r in rs], [max(r[f"loss_audit/{term}/rel_err"], 1e-12) for r in rs], style,
                       color=c, marker="o", label=f"{term} ({name})")
    a.axhline(1e-3, color="k", lw=0.8, ls=":", label="audit tolerance")
    a.set(title="1. loss-term audit: rel. error of each term's logit gradient", xlabel="step", ylabel="rel_err")
    a.legend(fontsize=7)
    a = ax[0, 1]
    rs = rows(runs / "default")
    st = [r["step"] for r in rs]
    a.plot(st, [r["consistency/logp_abs_max"] for r in rs], "o-", label="consistency/logp_abs_max")
    a.plot(st, [r["ratio/max"] - 1 for r in rs], "s--", label="ratio/max - 1")
    a.set_yscale("symlog", linthresh=1e-7)
    a.axhline(1e-4, color="k", lw=0.8, ls=":", label="audit tolerance 1e-4")
    a.set(title="2. on-policy: log-probs under other splits / paddings", xlabel="step", ylabel="nats")
    a.legend(fontsize=7)
    a = ax[1, 0]
    keys = ["adv/zero_frac_all_correct", "adv/zero_frac_all_wrong", "adv/zero_frac_truncated"]
    a.stackplot(st, *[[r[k] for r in rs] for k in keys], labels=[k.split("/")[1] for k in keys], alpha=0.8)
    a.plot(st, [r["adv/zero_frac"] for r in rs], "k-", lw=1, label="adv/zero_frac")
    a.set(title="3. why groups gave no signal", xlabel="step", ylabel="fraction of groups")
    a.legend(fontsize=7)
    a = ax[1, 1]
    rs = rows(runs / "topp")
    st = [r["step"] for r in rs]
    a.plot(st, [r["mismatch/sampler_logp_offset_mean"] for r in rs], "o-", label="mismatch/sampler_logp_offset_mean (top_p 0.9)")
    a.plot(st, [-r["rollout_ratio/log_mean"] for r in rs], "x--", label="-rollout_ratio/log_mean (top_p 0.9)")
    a.set(title="4-5. top-p offset in every ratio; staleness as lag", xlabel="step", ylabel="nats")
    b = a.twinx()
    rs = rows(runs / "topp_stale")
    b.step([r["step"] for r in rs], [r["offpolicy/version_lag_max"] for r in rs], "C2", where="mid",
           label="offpolicy/version_lag_max (staleness 2)")
    b.set_ylabel("updates")
    h1, l1 = a.get_legend_handles_labels()
    h2, l2 = b.get_legend_handles_labels()
    a.legend(h1 + h2, l1 + l2, fontsize=7, loc="center right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", default="/tmp/peerq")
    p.add_argument("--train", action="store_true")
    p.add_argument("--only-bonus", action="store_true")
    args = p.parse_args()
    runs = Path(args.runs)
    if args.only_bonus:
        bonus(runs / "bonus_ok", cut=False)
        bonus(runs / "bonus_cut", cut=True)
        return 0
    if args.train:
        train(runs)
    plot(runs, ROOT / "docs/figures/peer_questions.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
