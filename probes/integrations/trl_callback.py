"""solidrl's probes on TRL's GRPOTrainer: the same metrics.jsonl rows and per-step statistics.

    from solidrl.probes.integrations.trl_callback import SolidrlCallback, SolidrlGRPOTrainer
    trainer = SolidrlGRPOTrainer(model=..., reward_funcs=[accuracy], args=GRPOConfig(...), train_dataset=...,
                                 callbacks=[SolidrlCallback("runs/trl")])
    trainer.train()

writes runs/trl/metrics.jsonl (one row per optimizer step, solidrl's names), stats/step_*.pt (the batch
statistics of docs/contracts.md), config.json (the run described as a solidrl TrainConfig),
trl_config.json and status.json; each logged TRL entry also carries the rows' means under solidrl's
names, so trainer_state.json and every report_to logger see them (probe-check --from-log reads them).

Why a subclass as well as a callback: a TrainerCallback sees the model and the optimizer but neither
the batch nor the logits (TRL 1.x's fused LM head never forms them), nor d loss / d logp. The subclass
adds three things and changes no formula of TRL's:
  _generate_and_score_completions   keeps each row's reward, accuracy and position in the group
  _get_per_token_logps_and_entropies on probed steps, inside the loss only: the unfused forward
                                    (full logits over the completion, the same log-probs and entropies
                                    TRL's kernel returns), logits kept detached, log-probs kept for their grad
  _get_grad_norm, log               the pre-clip gradient norm; the rows merged into TRL's log
The callback then drives solidrl's Recorder (probes/recorder.py) at the matching moments:
  on_pre_optimizer_step  (gradients summed over the accumulation window, clipped)  after_rollout + after_backward
  on_step_end            (parameters updated)                                       step_end, row written
One solidrl step = one TRL optimizer step; its batch is the micro-batches of that accumulation window,
put back in generation order (TRL shuffles them). pi_old of the probes is the policy before this
optimizer step (TRL's old log-probs still set the loss's ratio when num_iterations > 1).

Not computable here, so absent: mismatch/* and the `log_ratio` statistic (TRL's transformers sampler
keeps no sampling log-probs; with vLLM it does and they are used), reward/accuracy and pass@k without
an accuracy reward function (`accuracy_reward`, default the function named "accuracy").

Multi-GPU (accelerate / DeepSpeed): the probes run on the main process, on its shard of the batch;
gradient and update norms are global (DDP, ZeRO-1/2 replicate the parameters). ZeRO-3 and FSDP shard
the weights, which the probes' extra forwards cannot gather alone: refused at train begin.
"""
from __future__ import annotations

import copy
import json
import time
from types import SimpleNamespace
from typing import Any, Optional

import numpy as np
import torch
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from solidrl.trainer.config import ProbesConfig, TrainConfig, apply_overrides
from solidrl.trainer.loop import StepContext
from solidrl.trainer.rollout import Rollout
from solidrl.trainer.tasks import Problem, get_task

from solidrl.probes.probeset import trl_groups
from solidrl.probes.recorder import Recorder

__all__ = ["SolidrlCallback", "SolidrlGRPOTrainer", "attach", "trl_config", "task_dataset", "task_reward"]

# TRL loss_type -> solidrl aggregation of the same normalizer (trainer/algos.py AGGREGATIONS).
LOSS_AGG = {"grpo": "seq-mean-token-mean", "dr_grpo": "seq-mean-token-sum-norm", "bnpo": "token-mean",
            "dapo": "token-mean"}
ADVANTAGE = {"group": "grpo", "none": "dr_grpo"}
ROW_KEYS_TRL_LOGS = ("step", "loss", "lr")  # TRL logs these itself (loss, learning_rate)


def trl_config(args: GRPOConfig, probes: ProbesConfig, rows_per_step: int, task: Optional[str] = None,
               model_path: Optional[str] = None) -> TrainConfig:
    """The TRL run described as a solidrl TrainConfig (what the recorder reads; written as config.json)."""
    G = args.num_generations
    over = {
        "model.path": model_path, "task.name": task or "external",
        "task.max_new_tokens": args.max_completion_length,
        "rollout.prompts_per_step": max(1, rows_per_step // G), "rollout.group_size": G,
        "rollout.temperature": args.temperature, "rollout.top_k": args.top_k or 0, "rollout.top_p": args.top_p,
        "algo.advantage": ADVANTAGE.get(args.scale_rewards, "grpo"), "algo.policy_loss": "ppo_clip",
        "algo.loss_agg": LOSS_AGG.get(args.loss_type, "token-mean"), "algo.eps_low": args.epsilon,
        "algo.eps_high": args.epsilon_high if args.epsilon_high is not None else args.epsilon,
        "algo.kl_coef": args.beta, "algo.entropy_coef": float(getattr(args, "entropy_coef", 0.0) or 0.0),
        "optim.lr": args.learning_rate, "optim.weight_decay": args.weight_decay,
        "optim.betas": (args.adam_beta1, args.adam_beta2), "optim.grad_clip": args.max_grad_norm,
        "run.seed": args.seed, "run.steps": max(args.max_steps, 0), "run.device": str(args.device),
    }
    over.update({f"probes.{k}": v for k, v in probes.__dict__.items()})
    return apply_overrides(TrainConfig(), over)


# ----------------------------------------------------------------------------------------------
# A solidrl task as a TRL dataset and reward function


def task_dataset(task_name: str, tokenizer, prompts_per_step: int, steps: int, seed: int = 0):
    """The prompts solidrl's trainer samples at steps 0..steps-1 (rng([seed, step])), in order, as a
    `datasets.Dataset`; with GRPOConfig(shuffle_dataset=False) TRL's step k sees solidrl's step-k prompts."""
    from datasets import Dataset

    task = get_task(task_name)
    rows = []
    bos = tokenizer.bos_token or ""
    adds_bos = bool(tokenizer("1")["input_ids"][:1] == [tokenizer.bos_token_id])
    for step in range(steps):
        for p in task.sample(prompts_per_step, np.random.default_rng([seed, step])):
            prompt = ([{"role": "user", "content": p.question}] if task.chat
                      else (p.prompt if adds_bos else bos + p.prompt))  # solidrl's encode_prompts adds BOS
            rows.append({"prompt": prompt, "raw_prompt": p.prompt, "answer": p.answer, "solution": p.solution,
                         "question": p.question, "meta": json.dumps(p.meta)})
    return Dataset.from_list(rows)


def task_reward(task_name: str, eos_token_id: int):
    """TRL reward function `accuracy`: the task's exact grader, 0 for a truncated completion (no EOS)
    unless the task grades truncated answers; TRL logs it as rewards/accuracy/mean (-> reward/accuracy)."""
    task = get_task(task_name)

    def accuracy(prompts, completions, completion_ids, raw_prompt, answer, solution, question, meta, **kw):
        out = []
        for c, ids, rp, a, s, q, m in zip(completions, completion_ids, raw_prompt, answer, solution, question, meta):
            text = c[-1]["content"] if isinstance(c, list) else c
            if eos_token_id not in ids and not task.grade_truncated:
                out.append(0.0)
                continue
            out.append(task.grade(Problem(rp, a, s, json.loads(m), q), text))
        return out

    return accuracy


# ----------------------------------------------------------------------------------------------
# The subclass: hook points TRL does not expose


class SolidrlGRPOTrainer(GRPOTrainer):
    """GRPOTrainer with the hook points solidrl's probes need (see the module docstring); same training."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._sr_capture: Optional[list] = None   # micro-batches of the current step, when recording
        self._sr_logits = False                   # probed step: take the unfused forward in the loss
        self._sr_in_loss = False
        self._sr_last: Optional[tuple] = None
        self._sr_grad_norm = float("nan")
        self._sr_rollout_s = 0.0
        self._sr_rewards: Optional[torch.Tensor] = None
        for cb in self.callback_handler.callbacks:
            if isinstance(cb, SolidrlCallback):
                cb.bind(self)

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        r = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._sr_rewards = r  # [rows of all processes, reward functions]
        return r

    def _generate_and_score_completions(self, inputs):
        t0 = time.perf_counter()
        out = super()._generate_and_score_completions(inputs)
        if self.model.training and self._sr_rewards is not None:
            n = out["prompt_ids"].shape[0]
            i = self.accelerator.process_index
            rpf = self._sr_rewards[i * n:(i + 1) * n].float()
            out["solidrl_row"] = torch.arange(i * n, (i + 1) * n, device=rpf.device)  # group = row // G
            out["solidrl_reward"] = (rpf * self.reward_weights.to(rpf.device)).nansum(1)
            acc = next((c for c in self.callback_handler.callbacks if isinstance(c, SolidrlCallback)), None)
            name = acc.accuracy_reward if acc else None
            if name in self.reward_func_names:
                out["solidrl_correct"] = rpf[:, self.reward_func_names.index(name)]
            self._sr_rollout_s += time.perf_counter() - t0
        return out

    def _compute_loss(self, model, inputs):
        if self._sr_capture is None or not self.model.training:
            return super()._compute_loss(model, inputs)
        self._sr_in_loss, self._sr_last = self._sr_logits, None
        try:
            loss = super()._compute_loss(model, inputs)
        finally:
            self._sr_in_loss = False
        self._sr_capture.append({"inputs": inputs, "loss": float(loss.detach()),
                                 "logits": None if self._sr_last is None else self._sr_last[0],
                                 "logps": None if self._sr_last is None else self._sr_last[1]})
        return loss

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep,
                                           batch_size=None, compute_entropy=False, compute_aux_loss=False, **kw):
        if not self._sr_in_loss or compute_aux_loss or any(v is not None for v in kw.values()):
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size,
                compute_entropy=compute_entropy, compute_aux_loss=compute_aux_loss, **kw)
        logits = self.solidrl_logits(model, input_ids, attention_mask, logits_to_keep)   # [B, T, V]
        lp_all = torch.log_softmax(logits, -1)
        logps = lp_all.gather(-1, input_ids[:, -logits_to_keep:, None]).squeeze(-1)
        valid = attention_mask[:, -logits_to_keep:] > 0
        logps = logps.masked_fill(~valid, 0.0)            # TRL's kernel returns 0 at padding
        ent = (-(lp_all.exp() * lp_all).sum(-1)).masked_fill(~valid, 0.0) if compute_entropy else None
        logps.retain_grad()
        self._sr_last = (logits.detach(), logps)
        return logps, ent, None

    def solidrl_logits(self, model, input_ids, attention_mask, logits_to_keep: int) -> torch.Tensor:
        """Full logits [B, T, V] / temperature predicting the last T tokens: TRL's forward, unfused."""
        with self.accelerator.autocast():
            out = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=logits_to_keep + 1,
                        use_cache=False)
        return out.logits[:, :-1, :].float() / self.temperature

    def _get_grad_norm(self, model, grad_norm=None):
        g = super()._get_grad_norm(model, grad_norm=grad_norm)
        self._sr_grad_norm = float(g)
        return g

    def log(self, logs: dict[str, float], start_time: Optional[float] = None) -> None:
        if self.model.training and "loss" in logs:
            for cb in self.callback_handler.callbacks:
                if isinstance(cb, SolidrlCallback):
                    for k, v in cb.pop_log_means().items():
                        logs.setdefault(k, v)
        super().log(logs, start_time)


# ----------------------------------------------------------------------------------------------
# The recorder, reading logits through TRL's forward


class _TRLRecorder(Recorder):
    """solidrl's Recorder with TRL's forward convention for its extra forwards and TRL's missing pieces absent."""

    def __init__(self, trainer, groups, bridge: "SolidrlCallback"):
        super().__init__(trainer, groups)
        self.bridge = bridge
        self.base_groups = self.groups

    def _forward(self, model, ro: Rollout, what: str, ctx: StepContext, **kw) -> torch.Tensor:
        ids = torch.cat([ro.prompt_ids, ro.response_ids], 1)
        mask = torch.cat([ro.prompt_mask, ro.response_mask.long()], 1)
        with torch.no_grad():
            return self.bridge.trainer.solidrl_logits(model, ids, mask, ro.response_ids.shape[1])

    def _outcome(self, row: dict, ctx: StepContext) -> None:
        if self.bridge.step_has_correct:
            return super()._outcome(row, ctx)
        row["reward/std"] = float(ctx.rewards.double().std(correction=0))
        row["response/length_max"] = float(ctx.rollout.lengths.max())

    def _stats(self, ctx, st, loss_tok, seq_index, adv_tok, coef, rollout_logp, update):
        stats = super()._stats(ctx, st, loss_tok, seq_index, adv_tok, coef, rollout_logp, update)
        stats["group_index"] = self.bridge.step_groups.cpu()
        if not self.bridge.step_has_sampler_logp:
            stats.pop("log_ratio")
        if not self.bridge.step_has_correct:
            stats.pop("correct")
        return stats


def _pad(ts: list[torch.Tensor], value, left: bool = False) -> torch.Tensor:
    """Concatenate [b_i, T_i, ...] tensors along dim 0, padding dim 1 to the widest."""
    T = max(t.shape[1] for t in ts)
    out = []
    for t in ts:
        pad = T - t.shape[1]
        if pad:
            fill = torch.full((t.shape[0], pad, *t.shape[2:]), value, dtype=t.dtype, device=t.device)
            t = torch.cat([fill, t] if left else [t, fill], 1)
        out.append(t)
    return torch.cat(out, 0)


class SolidrlCallback(TrainerCallback):
    """Records solidrl's probes on a SolidrlGRPOTrainer's steps into `out_dir` (see the module docstring).

    probes: a ProbesConfig or a dict of its fields (groups, every, jvp_every, max_states, save_stats).
    accuracy_reward: the reward function whose value is the 0/1 grade (reward/accuracy, pass@k).
    task: the solidrl task name, recorded in config.json. log_to_trl: merge the rows into TRL's log.
    """

    def __init__(self, out_dir, probes: ProbesConfig | dict | None = None, accuracy_reward: Optional[str] = "accuracy",
                 task: Optional[str] = None, log_to_trl: bool = True):
        from pathlib import Path

        self.out = Path(out_dir)
        self.probes = probes if isinstance(probes, ProbesConfig) else ProbesConfig(**(probes or {}))
        trl_groups(self.probes.groups)  # a group this callback cannot run is refused now, not at train begin
        self.accuracy_reward, self.task, self.log_to_trl = accuracy_reward, task, log_to_trl
        self.trainer: Optional[SolidrlGRPOTrainer] = None
        self.recorder: Optional[_TRLRecorder] = None
        self._pending: list[dict] = []
        self._ctx: Optional[StepContext] = None
        self.step_has_correct = self.step_has_sampler_logp = False
        self.step_groups: Optional[torch.Tensor] = None

    def bind(self, trainer: SolidrlGRPOTrainer) -> None:
        self.trainer = trainer

    # -- wiring ----------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kw):
        tr = self.trainer
        if tr is None:
            raise TypeError("SolidrlCallback needs SolidrlGRPOTrainer (from solidrl.probes.integrations.trl_callback): "
                            "a plain GRPOTrainer exposes neither the batch nor the logits to a callback")
        if not tr.accelerator.is_main_process:
            return
        dist = str(tr.accelerator.distributed_type)
        ds = getattr(tr.accelerator.state, "deepspeed_plugin", None)
        if "FSDP" in dist or (ds is not None and getattr(ds, "zero_stage", 0) == 3):
            raise ValueError("solidrl's probes run extra forwards on the main process only, which ZeRO-3 / FSDP "
                             "cannot do (the weights are sharded): use DDP or ZeRO-1/2, or leave the callback out")
        rows = args.per_device_train_batch_size * args.gradient_accumulation_steps
        path = getattr(tr.model.config, "_name_or_path", None) or None
        self.cfg = trl_config(args, self.probes, rows, self.task, path)
        model = tr.accelerator.unwrap_model(tr.model)
        groups = trl_groups(self.probes.groups)  # the recorder's groups: the other probes need solidrl's trainer
        ref = tr.ref_model
        if ref is None and "ref" in groups:
            ref = copy.deepcopy(model).eval().requires_grad_(False)  # the policy at train begin, like solidrl's
            # TRL patched model.forward with a closure over the live model's original forward, which
            # deepcopy does not rebind: drop the instance attribute so the copy runs its own weights.
            ref.__dict__.pop("forward", None)
        self.facade = SimpleNamespace(cfg=self.cfg, out=self.out, model=model, ref_model=ref,
                                      optimizer=SimpleNamespace(param_groups=[{"lr": args.learning_rate}]))
        self.out.mkdir(parents=True, exist_ok=True)
        self.recorder = _TRLRecorder(self.facade, groups, self)
        if self.recorder.save_stats:
            self.recorder.stats_dir.mkdir(parents=True, exist_ok=True)
        (self.out / "config.json").write_text(self.cfg.to_json())
        (self.out / "trl_config.json").write_text(json.dumps(args.to_dict(), indent=2, default=str))
        metrics = self.out / "metrics.jsonl"
        keep = []
        if state.global_step > 0 and metrics.exists():  # resumed: keep the rows the checkpoint covers
            keep = [ln for ln in metrics.read_text().splitlines()
                    if ln.strip() and json.loads(ln)["step"] < state.global_step]
        metrics.write_text("".join(r + "\n" for r in keep))
        self._file = open(metrics, "a")

    def on_step_begin(self, args, state, control, **kw):
        tr = self.trainer
        if self.recorder is None:
            return
        tr._sr_capture = []
        tr._sr_logits = self.recorder.enabled and self.recorder.probed(state.global_step)
        tr._sr_rollout_s = 0.0
        self._t0 = time.perf_counter()

    def on_pre_optimizer_step(self, args, state, control, **kw):
        tr = self.trainer
        if self.recorder is None or not tr._sr_capture:
            return
        mbs, tr._sr_capture = tr._sr_capture, None
        self.facade.optimizer.param_groups[0]["lr"] = float(tr.optimizer.param_groups[0]["lr"])
        ctx = self._context(state.global_step, mbs)
        self._ctx = ctx
        if ctx.old_logits is None or not self.recorder.enabled:
            return
        rec = self.recorder
        rec.groups = rec.base_groups - ({"outcome", "adv"} if not self.step_complete_groups else set()) \
            - ({"mismatch"} if not self.step_has_sampler_logp else set())
        rec.after_rollout(ctx)
        ctx.update, ctx.index = 0, torch.arange(ctx.mask.shape[0], device=ctx.mask.device)
        ctx.logits, ctx.logp, ctx.grad_norm = ctx.old_logits, self._logp, tr._sr_grad_norm
        rec.after_backward(ctx)

    def on_step_end(self, args, state, control, **kw):
        ctx, self._ctx, self._logp = self._ctx, None, None
        if ctx is None:
            return
        tr = self.trainer
        step_s = time.perf_counter() - self._t0
        ro = ctx.rollout
        row: dict[str, Any] = {"step": ctx.step, "reward/mean": float(ctx.rewards.mean())}
        if self.step_has_correct:
            row["reward/accuracy"] = float(ctx.correct.mean())
        row.update({"response/length_mean": float(ro.lengths.mean()),
                    "response/truncated_frac": float(ro.truncated.float().mean()),
                    "loss": self._loss, "grad/norm": tr._sr_grad_norm,
                    "lr": self.facade.optimizer.param_groups[0]["lr"]})
        ctx.metrics = row
        if self.recorder.enabled and ctx.old_logits is not None:
            self.recorder.step_end(ctx)
        row["time/rollout_s"] = tr._sr_rollout_s
        row["time/update_s"] = step_s - tr._sr_rollout_s
        row["time/step_s"] = step_s
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self.log_to_trl:
            self._pending.append(row)

    def on_train_end(self, args, state, control, **kw):
        if self.recorder is None:
            return
        self._file.close()
        (self.out / "status.json").write_text(json.dumps({"status": "finished", "step": state.global_step - 1},
                                                         indent=2))

    def pop_log_means(self) -> dict[str, float]:
        """Means of the rows since the last TRL log entry (solidrl names; keys TRL logs itself left out)."""
        rows, self._pending = self._pending, []
        keys = {k for r in rows for k in r if k not in ROW_KEYS_TRL_LOGS}
        return {k: float(np.mean([r[k] for r in rows if k in r])) for k in sorted(keys)}

    # -- the step's batch --------------------------------------------------------------------------
    def _context(self, step: int, mbs: list[dict]) -> StepContext:
        """One StepContext from the window's micro-batches, rows back in generation (group) order."""
        tr = self.trainer
        inp = [m["inputs"] for m in mbs]
        row = torch.cat([x["solidrl_row"] for x in inp])
        order = torch.argsort(row)
        cat = lambda key: torch.cat([x[key] for x in inp])[order]  # noqa: E731
        prompt_ids = _pad([x["prompt_ids"] for x in inp], tr._tokenizer.pad_token_id, left=True)[order]
        prompt_mask = _pad([x["prompt_mask"] for x in inp], 0, left=True)[order]
        comp_ids = _pad([x["completion_ids"] for x in inp], tr._tokenizer.pad_token_id)[order]
        comp_mask = _pad([x["completion_mask"] if "tool_mask" not in x else x["completion_mask"] * x["tool_mask"]
                          for x in inp], 0)[order].float()
        eos = torch.tensor(tr.eos_token_ids, device=comp_ids.device)
        truncated = ~(torch.isin(comp_ids, eos) & (comp_mask > 0)).any(1)
        self.step_has_sampler_logp = all("sampling_per_token_logps" in x for x in inp)
        rollout_logp = (_pad([x["sampling_per_token_logps"] for x in inp], 0.0)[order].float()
                        if self.step_has_sampler_logp else torch.zeros_like(comp_mask))
        ro = Rollout(prompt_ids=prompt_ids, prompt_mask=prompt_mask, response_ids=comp_ids,
                     response_mask=comp_mask, rollout_logp=rollout_logp, truncated=truncated)
        G = self.cfg.rollout.group_size
        groups = row[order] // G
        self.step_groups = groups
        counts = torch.bincount(groups - groups.min())
        self.step_complete_groups = bool((counts[counts > 0] == G).all() and
                                         (row[order] == torch.arange(int(row.min()), int(row.min()) + len(row),
                                                                     device=row.device)).all())
        self.step_has_correct = all("solidrl_correct" in x for x in inp)
        rewards = cat("solidrl_reward")
        correct = cat("solidrl_correct") if self.step_has_correct else torch.full_like(rewards, float("nan"))
        adv = cat("advantages").float()
        adv = adv if adv.dim() == 1 else adv[:, 0]
        self._loss = float(sum(m["loss"] for m in mbs))
        old_logits = logp = None
        if all(m["logits"] is not None for m in mbs):
            old_logits = _pad([m["logits"] for m in mbs], 0.0)[order]
            lps = [m["logps"] for m in mbs]
            logp = _pad([lp.detach() for lp in lps], 0.0)[order]
            grads = [lp.grad if lp.grad is not None else torch.zeros_like(lp) for lp in lps]
            logp.grad = _pad(grads, 0.0)[order]
        self._logp = logp
        if all("old_per_token_logps" in x for x in inp):
            old_logp = _pad([x["old_per_token_logps"] for x in inp], 0.0)[order].float()
        else:
            old_logp = None if logp is None else logp.detach()
        return StepContext(step=step, cfg=self.cfg, trainer=self.facade, problems=[], rollout=ro, texts=[],
                           correct=correct, rewards=rewards, advantages=adv, mask=comp_mask,
                           old_logits=old_logits, old_logp=old_logp, weights=torch.ones_like(comp_mask))


def attach(trainer: SolidrlGRPOTrainer, out_dir, **kwargs) -> SolidrlCallback:
    """Add a SolidrlCallback to an existing SolidrlGRPOTrainer (before train())."""
    if not isinstance(trainer, SolidrlGRPOTrainer):
        raise TypeError("attach() needs a SolidrlGRPOTrainer: a plain GRPOTrainer exposes neither the batch nor "
                        "the logits to a callback")
    cb = SolidrlCallback(out_dir, **kwargs)
    trainer.add_callback(cb)
    cb.bind(trainer)
    return cb
