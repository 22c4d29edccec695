"""solidrl's trainer vs TRL's GRPOTrainer: same workload, interleaved in one process; speed, memory, agreement.

Workload, both sides: the cold-start model directory of a named size (solidrl.trainer.sft.cold_start, the
same directory and tokenizer), task addition, 64 prompts x 8 samples per step with the same prompts at
every step (probes/integrations/trl_callback.py task_dataset), max new tokens = the task budget (6), temperature 1,
top_k 0, AdamW at a constant lr 3e-4, no grad clipping, no KL; solidrl's defaults (GRPO advantage,
token-mean) and TRL's matching ones (scale_rewards "group", loss_type "dapo"). TRL keeps its other
defaults (gradient checkpointing on, logging every 10 steps); --trl-no-checkpointing turns checkpointing off.
Probes are off on the solidrl side (bench/probe_overhead.py measures them).

Interleaving: TRL's train() drives, and a callback runs one solidrl step inside every TRL on_step_end,
so both sides share whatever load the machine has at that moment (the 2-core machine is shared with
other jobs: absolute times move, the ratio of medians of interleaved steps stays meaningful). A TRL
step is timed from the end of the previous solidrl step to this on_step_end: data loading,
generation, loss, backward, optimizer and TRL's own logging. The first --warmup steps are dropped.

Memory: peak RSS of a child process running one side alone (--steps-mem steps), above its RSS after
setup (on CUDA: torch.cuda.max_memory_allocated, per side, in the interleaved run).

Agreement, before training, from the same weights on solidrl's batch of step 0:
  loss       TRL's _compute_loss (loss_type grpo, dr_grpo, bnpo, dapo) vs solidrl's ppo_clip with the
             aggregation of the same normalizer (seq-mean-token-mean, seq-mean-token-sum-norm with the
             budget, token-mean, token-mean), identical advantages and old log-probs perturbed by
             N(0, 0.3^2) so that both clip branches bind; values and gradients compared
  entropy    TRL's logged `entropy` vs solidrl's entropy/token_mean (exact, from the logits)
  grad norm  on-policy: TRL dapo vs solidrl vanilla + token-mean (the same gradient at ratio 1)
  advantage  TRL's std is unbiased with eps 1e-4, solidrl's is the population std with eps 1e-6:
             a mixed group's advantages differ by sqrt(G/(G-1)) (documented, not a disagreement)

    .venv/bin/python bench/vs_trl.py [--sizes nano micro] [--steps 20] [--warmup 3] [--threads N]
                                     [--trl-no-checkpointing] [--out bench/results/vs_trl.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from solidrl.trainer import algos
from solidrl.trainer.config import TrainConfig, apply_overrides
from solidrl.trainer.loop import Trainer
from solidrl.trainer.model import count_params, load_pretrained
from solidrl.trainer.rollout import response_logits

PROMPTS, GROUP, LR = 64, 8, 3e-4
TRL_LOSSES = {"grpo": "seq-mean-token-mean", "dr_grpo": "seq-mean-token-sum-norm", "bnpo": "token-mean",
              "dapo": "token-mean"}


def bench_config(size: str, steps: int) -> TrainConfig:
    return apply_overrides(TrainConfig(), {"model.size": size, "run.steps": steps, "probes.enabled": False,
                                           "rollout.prompts_per_step": PROMPTS, "rollout.group_size": GROUP,
                                           "optim.lr": LR})


def solidrl_trainer(size: str, steps: int) -> Trainer:
    return Trainer(bench_config(size, steps), tempfile.mkdtemp(prefix="vs_trl_solidrl_"), progress=False)


def trl_trainer(cfg: TrainConfig, init_dir: str, budget: int, steps: int, checkpointing: bool):
    """A plain GRPOTrainer on solidrl's cold start, prompts and grader; times its generation."""
    from transformers.utils import logging as hf_logging
    from trl import GRPOConfig, GRPOTrainer

    from solidrl.probes.integrations.trl_callback import task_dataset, task_reward

    hf_logging.set_verbosity_error()

    class TimedGRPOTrainer(GRPOTrainer):
        gen_s: list = []
        gen_tokens: list = []

        def _generate_and_score_completions(self, inputs):
            t0 = time.perf_counter()
            out = super()._generate_and_score_completions(inputs)
            self.gen_s.append(time.perf_counter() - t0)
            self.gen_tokens.append(float(out["completion_mask"].sum()))
            return out

    model, tok = load_pretrained(init_dir)
    args = GRPOConfig(output_dir=tempfile.mkdtemp(prefix="vs_trl_trl_"), use_cpu=not torch.cuda.is_available(),
                      bf16=False, per_device_train_batch_size=PROMPTS * GROUP, num_generations=GROUP,
                      max_completion_length=budget, temperature=1.0, top_k=0, max_steps=steps,
                      learning_rate=LR, lr_scheduler_type="constant", max_grad_norm=0.0, beta=0.0,
                      loss_type="dapo", scale_rewards="group", shuffle_dataset=False, seed=0,
                      gradient_checkpointing=checkpointing, report_to=[], save_strategy="no", disable_tqdm=True)
    ds = task_dataset(cfg.task.name, tok, PROMPTS, steps + 1, seed=cfg.run.seed)
    return TimedGRPOTrainer(model=model, reward_funcs=[task_reward(cfg.task.name, tok.eos_token_id)],
                            args=args, train_dataset=ds, processing_class=tok)


# ----------------------------------------------------------------------------------------------
# Agreement


def trl_inputs(t: Trainer, ro, adv, old_logp=None) -> dict:
    inputs = {"prompt_ids": ro.prompt_ids, "prompt_mask": ro.prompt_mask, "completion_ids": ro.response_ids,
              "completion_mask": ro.response_mask.long(), "advantages": adv,
              "num_items_in_batch": ro.response_mask.sum()}
    if old_logp is not None:
        inputs["old_per_token_logps"] = old_logp
    return inputs


def _grads(model) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None]).double()


def agreement(t: Trainer, tr) -> dict:
    """Loss, gradient, entropy and grad norm of both libraries on one batch from identical weights."""
    torch.manual_seed(0)
    problems = t.sample_problems(0)
    ro = t.rollout(problems, 0)
    _, correct = t.grade(problems, ro)
    adv = algos.ADVANTAGES.get("grpo")(correct.view(-1, GROUP)).reshape(-1)
    mask = ro.response_mask
    tr.model.train()
    tr.current_gradient_accumulation_steps = 1
    with torch.no_grad():
        lp0 = t._policy_logp(response_logits(t.model, ro).float(), ro.response_ids)
    old = (lp0 + 0.3 * torch.randn(lp0.shape, generator=torch.Generator().manual_seed(1))) * mask
    out = {"batch": {"sequences": int(mask.shape[0]), "tokens": int(mask.sum())}, "loss": {}}
    params = algos.PolicyLossParams(0.2, 0.2)
    for lt, agg_name in TRL_LOSSES.items():
        tr.loss_type = lt
        tr.model.zero_grad(set_to_none=True)
        l_trl = tr._compute_loss(tr.model, trl_inputs(t, ro, adv, old))
        l_trl.backward()
        g_trl = _grads(tr.model)
        t.model.zero_grad(set_to_none=True)
        logits = response_logits(t.model, ro).float()
        logp = t._policy_logp(logits, ro.response_ids)
        tok = algos.POLICY_LOSSES.get("ppo_clip")(logp, old, adv[:, None].expand_as(mask), mask, params)
        l_sol = algos.AGGREGATIONS.get(agg_name)(tok, mask, float(t.budget))
        l_sol.backward()
        g_sol = _grads(t.model)
        clip = float(tr._metrics["train"]["clip_ratio/region_mean"][-1])
        l_trl, l_sol = float(l_trl.detach()), float(l_sol.detach())
        out["loss"][lt] = {"solidrl_aggregation": agg_name, "trl": l_trl, "solidrl": l_sol,
                           "abs_diff": abs(l_trl - l_sol),
                           "grad_rel_diff": float((g_trl - g_sol).norm() / g_sol.norm()), "clip_frac": clip}
    # On-policy: entropy and gradient norm on the same batch (TRL dapo, no old log-probs; solidrl's default loss).
    tr.loss_type = "dapo"
    tr.model.zero_grad(set_to_none=True)
    tr._compute_loss(tr.model, trl_inputs(t, ro, adv)).backward()
    gn_trl = float(_grads(tr.model).norm())
    ent_trl = float(tr._metrics["train"]["entropy"][-1])
    t.model.zero_grad(set_to_none=True)
    logits = response_logits(t.model, ro).float()
    logp = t._policy_logp(logits, ro.response_ids)
    tok = algos.POLICY_LOSSES.get("vanilla")(logp, logp.detach(), adv[:, None].expand_as(mask), mask, params)
    algos.AGGREGATIONS.get("token-mean")(tok, mask, float(t.budget)).backward()
    gn_sol = float(_grads(t.model).norm())
    from solidrl.probes.metrics import softmax_stats

    ent_sol = float(softmax_stats(logits.detach()[mask > 0])["entropy"].mean())
    tr.model.zero_grad(set_to_none=True)
    t.model.zero_grad(set_to_none=True)
    out["entropy"] = {"trl": ent_trl, "solidrl": ent_sol, "rel_diff": abs(ent_trl - ent_sol) / ent_sol}
    out["grad_norm"] = {"trl": gn_trl, "solidrl": gn_sol, "rel_diff": abs(gn_trl - gn_sol) / gn_sol}
    # Advantages: TRL's formula on the same rewards vs solidrl's grpo.
    r = correct.view(-1, GROUP)
    a_trl = ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4)).reshape(-1)
    mixed = (r.std(1) > 0).repeat_interleave(GROUP)
    ratio = (adv[mixed] / a_trl[mixed]).double()
    out["advantage_ratio_solidrl_over_trl"] = {"min": float(ratio.min()), "max": float(ratio.max()),
                                               "expected_sqrt_G_over_G_minus_1": (GROUP / (GROUP - 1)) ** 0.5}
    return out


# ----------------------------------------------------------------------------------------------
# Speed


def interleaved(size: str, steps: int, warmup: int, checkpointing: bool) -> dict:
    from transformers import TrainerCallback

    t = solidrl_trainer(size, steps + warmup)
    tr = trl_trainer(t.cfg, t.init_dir, t.budget, steps + warmup, checkpointing)
    agree = agreement(t, tr)
    cuda = torch.cuda.is_available()
    T = {"trl": [], "solidrl": [], "solidrl_tokens": [], "mem_trl": [], "mem_solidrl": []}

    class Interleave(TrainerCallback):
        t_end = None

        def on_step_begin(self, args, state, control, **kw):
            if cuda and state.global_step == 0:
                torch.cuda.reset_peak_memory_stats()

        def on_train_begin(self, args, state, control, **kw):
            self.t_end = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            T["trl"].append(time.perf_counter() - self.t_end)
            if cuda:
                T["mem_trl"].append(torch.cuda.max_memory_allocated())
                torch.cuda.reset_peak_memory_stats()
            toks = []
            hook = lambda ctx: toks.append(float(ctx.rollout.response_mask.sum()))  # noqa: E731
            t.hooks["step_end"] = [hook]
            t0 = time.perf_counter()
            t.train_step(state.global_step - 1)
            T["solidrl"].append(time.perf_counter() - t0)
            T["solidrl_tokens"].append(toks[0])
            if cuda:
                T["mem_solidrl"].append(torch.cuda.max_memory_allocated())
                torch.cuda.reset_peak_memory_stats()
            self.t_end = time.perf_counter()

    tr.add_callback(Interleave())
    tr.train()
    w = slice(warmup, None)
    trl_s, sol_s = statistics.median(T["trl"][w]), statistics.median(T["solidrl"][w])
    trl_tok = statistics.median(n / s for n, s in zip(tr.gen_tokens[w], T["trl"][w]))
    sol_tok = statistics.median(n / s for n, s in zip(T["solidrl_tokens"][w], T["solidrl"][w]))
    res = {"size": size, "params": count_params(t.model), "steps_timed": len(T["trl"][w]), "warmup": warmup,
           "threads": torch.get_num_threads(), "device": "cuda" if cuda else "cpu",
           "trl_gradient_checkpointing": checkpointing,
           "trl_step_s": trl_s, "solidrl_step_s": sol_s, "steps_per_s_ratio": trl_s / sol_s,
           "trl_tokens_per_s": trl_tok, "solidrl_tokens_per_s": sol_tok,
           "trl_generation_s": statistics.median(tr.gen_s[w]),
           "trl_steps": T["trl"], "solidrl_steps": T["solidrl"], "agreement": agree}
    if cuda:
        res["trl_peak_mib"] = max(T["mem_trl"][w]) / 2**20
        res["solidrl_peak_mib"] = max(T["mem_solidrl"][w]) / 2**20
    return res


def _status_mib(field: str) -> float:
    """VmRSS / VmHWM of this process in MiB (VmHWM restarts at exec, unlike getrusage's ru_maxrss)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def alone(side: str, size: str, steps: int, checkpointing: bool) -> dict:
    """One side alone (child process): RSS after setup and peak RSS over `steps` steps, MiB."""
    if side == "trl":
        from solidrl.trainer.sft import cold_start

        cfg = bench_config(size, steps)
        init_dir = str(cold_start(cfg, progress=False))
        from solidrl.trainer.tasks import get_task

        tr = trl_trainer(cfg, init_dir, cfg.task.max_new_tokens or get_task(cfg.task.name).max_new_tokens,
                         steps, checkpointing)
        base = _status_mib("VmRSS")
        tr.train()
    else:
        t = solidrl_trainer(size, steps)
        base = _status_mib("VmRSS")
        for s in range(steps):
            t.train_step(s)
    peak = _status_mib("VmHWM")
    return {"side": side, "rss_after_setup_mib": base, "peak_rss_mib": peak, "step_peak_above_setup_mib": peak - base}


def memory(size: str, steps: int, checkpointing: bool, threads: int) -> dict:
    out = {}
    for side in ("solidrl", "trl"):
        cmd = [sys.executable, __file__, "--alone", side, "--sizes", size, "--steps", str(steps),
               "--threads", str(threads)] + (["--trl-no-checkpointing"] if not checkpointing else [])
        p = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[side] = json.loads(p.stdout.strip().splitlines()[-1])
    return out


def report(r: dict) -> str:
    a = r["agreement"]
    lines = [f"{r['size']:6s} {r['params'] / 1e6:5.2f}M params, {r['threads']} thread(s), TRL gradient checkpointing "
             f"{'on' if r['trl_gradient_checkpointing'] else 'off'}, median of {r['steps_timed']} interleaved steps",
             f"  step time   solidrl {r['solidrl_step_s'] * 1e3:7.1f} ms   TRL {r['trl_step_s'] * 1e3:7.1f} ms   "
             f"steps/s ratio solidrl/TRL = {r['steps_per_s_ratio']:.2f}x",
             f"  tokens/s    solidrl {r['solidrl_tokens_per_s']:8.0f}     TRL {r['trl_tokens_per_s']:8.0f}   "
             "(generated tokens per training step second)"]
    if "memory" in r:
        m = r["memory"]
        lines.append(f"  peak RSS above setup  solidrl {m['solidrl']['step_peak_above_setup_mib']:6.0f} MiB   "
                     f"TRL {m['trl']['step_peak_above_setup_mib']:6.0f} MiB   (peak RSS {m['solidrl']['peak_rss_mib']:.0f} / "
                     f"{m['trl']['peak_rss_mib']:.0f} MiB)")
    if "trl_peak_mib" in r:
        lines.append(f"  peak CUDA   solidrl {r['solidrl_peak_mib']:.0f} MiB   TRL {r['trl_peak_mib']:.0f} MiB")
    for lt, v in a["loss"].items():
        lines.append(f"  loss {lt:8s} vs {v['solidrl_aggregation']:24s} TRL {v['trl']:+.6f} solidrl {v['solidrl']:+.6f} "
                     f"|diff| {v['abs_diff']:.1e}  grad rel diff {v['grad_rel_diff']:.1e}  (clip frac {v['clip_frac']:.2f})")
    lines.append(f"  entropy     TRL {a['entropy']['trl']:.6f} solidrl {a['entropy']['solidrl']:.6f} "
                 f"rel diff {a['entropy']['rel_diff']:.1e}")
    lines.append(f"  grad norm   TRL {a['grad_norm']['trl']:.6f} solidrl {a['grad_norm']['solidrl']:.6f} "
                 f"rel diff {a['grad_norm']['rel_diff']:.1e}")
    ar = a["advantage_ratio_solidrl_over_trl"]
    lines.append(f"  advantages  solidrl/TRL in [{ar['min']:.4f}, {ar['max']:.4f}] on mixed groups "
                 f"(sqrt(G/(G-1)) = {ar['expected_sqrt_G_over_G_minus_1']:.4f}, by design)")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["nano", "micro"])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--trl-no-checkpointing", action="store_true", help="TRL without gradient checkpointing")
    p.add_argument("--no-memory", action="store_true", help="skip the per-side peak-RSS child processes")
    p.add_argument("--steps-mem", type=int, default=5)
    p.add_argument("--alone", choices=["solidrl", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--out", default="bench/results/vs_trl.json")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    ckpt = not a.trl_no_checkpointing
    if a.alone:
        print(json.dumps(alone(a.alone, a.sizes[0], a.steps, ckpt)))
        return 0
    results = []
    for size in a.sizes:
        r = interleaved(size, a.steps, a.warmup, ckpt)
        if not a.no_memory and not torch.cuda.is_available():
            r["memory"] = memory(size, a.steps_mem, ckpt, torch.get_num_threads())
        results.append(r)
        print(report(r), flush=True)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": " ".join(["bench/vs_trl.py", *(argv or sys.argv[1:])]),
                               "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                               "load_average": os.getloadavg(), "results": results}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
