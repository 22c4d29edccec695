"""The policy-gradient loop: rollout -> grade -> advantages -> loss -> one optimizer step, with hooks.

Default = the perfect baseline (config.py): one optimizer step per rollout batch, the loss's
old log-probs are the trainer's own `logp.detach()` from the same forward (so the importance ratio
is exactly 1, bit for bit), AdamW, no grad clipping, no KL, no entropy bonus.

When an off-policy knob is on (mini-batches, epochs, staleness, partial rollouts, low-precision or
noisy rollout) the trainer first runs one no-grad forward over the whole batch to get pi_old, the
policy before this step's first update; ratios are then pi / pi_old and the off-policy correction
weights use pi_old / pi_rollout. Every token keeps the optimizer-update count of the weights that
sampled it (Rollout.token_version; its lag is StepContext.version - token_version).

Hook points (the trainer imports nothing from probes; anything may attach):
  after_rollout         ctx has the rollout, rewards, advantages, old logits, mask
  after_backward        ctx also has the update's logits/logp (logp.grad = d loss / d logp), loss parts
  after_optimizer_step  gradients still present, parameters updated
  step_end              ctx.metrics is the row about to be written; hooks may add keys
Rows go to run_dir/metrics.jsonl, one JSON object per step, flushed each step.

Collapse (collapse.py): after the step_end hooks the detector reads the row; a collapse (or a NaN/Inf
caught by the loop's guards, kind 'nan') writes `collapse/kind` and `collapse/reason` into that
step's row, stops the run and records {"status": "collapsed", "step", "kind", "reason"} in
status.json. Rows and checkpoints written before stay as they are (no checkpoint is taken after).

Left out on purpose: value functions/GAE (group baselines only), learning-rate schedules (a
constant lr keeps one-step predictions comparable along a run), sequence packing.
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from . import algos
from . import trust_region
from .collapse import CollapseDetector
from .config import ConfigError, TrainConfig, validate
from .model import DTYPES, MODEL_SIZES, load_pretrained
from .rollout import Rollout, RolloutEngine, generate, left_pad, response_logits
from .tasks import TASKS, Problem, get_task
from .tokenizer import render_prompts

HOOK_POINTS = ("after_rollout", "after_backward", "after_optimizer_step", "step_end")


class TrainingError(RuntimeError):
    """A run that cannot continue (NaN, collapse guard); one-line message naming step and quantity."""


class NonFiniteError(TrainingError):
    """A NaN/Inf in logits, loss or gradient norm. Trainer.run records it as a collapse of kind 'nan'
    (a row with collapse/kind and collapse/reason, status 'collapsed') and stops without raising."""

    def __init__(self, msg: str, step: int):
        super().__init__(msg)
        self.step = step


@dataclass
class StepContext:
    """Everything a probe may want at a hook point. Tensors are detached unless noted."""

    step: int
    cfg: TrainConfig
    trainer: "Trainer"
    problems: list[Problem]          # [S], each prompt repeated group_size times
    rollout: Rollout
    texts: list[str]                 # decoded responses [S]
    correct: torch.Tensor            # [S] float 0/1 (truncated = 0)
    rewards: torch.Tensor            # [S] float, after length penalty / KL-in-reward
    advantages: torch.Tensor         # [S] sequence advantages (after hard-prompt weighting)
    mask: torch.Tensor               # [S, R] float, tokens that enter the loss
    old_logits: torch.Tensor         # [S, R, V] pi_old (policy before this step's update) on the batch
    old_logp: torch.Tensor           # [S, R] log pi_old(a_t)
    weights: torch.Tensor            # [S, R] off-policy correction x hard-prompt weight per token
    ref_logits: Optional[torch.Tensor] = None  # [S, R, V] frozen reference, when the trainer computed it
    version: int = 0                 # optimizer updates before this step: the version of pi_old
    # per update (mini-batch); set before after_backward
    update: int = 0
    index: Optional[torch.Tensor] = None      # rows of the batch in this update
    logits: Optional[torch.Tensor] = None     # [s, R, V] detached logits of this update's forward
    logp: Optional[torch.Tensor] = None       # [s, R] (non-leaf; .grad holds d loss / d logp after backward)
    loss: Optional[torch.Tensor] = None
    loss_parts: dict[str, torch.Tensor] = field(default_factory=dict)
    grad_norm: float = float("nan")
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def token_version(self) -> Optional[torch.Tensor]:
        """[S, R] long: the optimizer-update count of the weights that sampled each response token
        (version - token_version is its lag; > 0 under staleness and partial rollouts)."""
        return self.rollout.token_version

    @property
    def model(self):
        return self.trainer.model

    @property
    def ref_model(self):
        return self.trainer.ref_model

    @property
    def optimizer(self):
        return self.trainer.optimizer


def check_names(cfg: TrainConfig) -> None:
    """Every registry name in the config exists (UnknownNameError lists the known ones)."""
    algos.ADVANTAGES.check(cfg.algo.advantage)
    algos.POLICY_LOSSES.check(cfg.algo.policy_loss)
    algos.AGGREGATIONS.check(cfg.algo.loss_agg)
    algos.KL_ESTIMATORS.check(cfg.algo.kl_estimator)
    algos.CORRECTIONS.check(cfg.offpolicy.correction)
    TASKS.check(cfg.task.name)
    if cfg.model.path is None:
        MODEL_SIZES.check(cfg.model.size)
        if TASKS.get(cfg.task.name).chat:
            raise ConfigError(f"task {cfg.task.name!r} is a chat task (prompts go through a chat template) and the "
                              f"char-level size {cfg.model.size!r} has none: add --model smollm2-135m, or pick a raw-text task")


def _finite_or_raise(x: torch.Tensor, what: str, step: int, out: Path) -> None:
    if not torch.isfinite(x).all():
        raise NonFiniteError(
            f"step {step}: non-finite {what} (NaN/Inf); metrics up to step {step - 1} are kept in "
            f"{out / 'metrics.jsonl'}; lower optim.lr or enable a stabilizer", step)


class Trainer:
    def __init__(self, cfg: TrainConfig, out_dir: str | Path, progress: bool = True,
                 resume: bool = False):
        validate(cfg)
        check_names(cfg)
        self.cfg = cfg
        self.out = Path(out_dir)
        self.progress = progress
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        self.task = get_task(cfg.task.name)
        self.budget = cfg.task.max_new_tokens or self.task.max_new_tokens
        self.device = torch.device(cfg.run.device)
        if cfg.model.path:
            self.init_dir = cfg.model.path
        else:
            from .sft import cold_start
            self.init_dir = str(cold_start(cfg, progress=progress))
        self.model, self.tokenizer = load_pretrained(self.init_dir, cfg.model.dtype, cfg.run.device)
        self.model.train()
        self.ref_model = copy.deepcopy(self.model).eval().requires_grad_(False)
        o = cfg.optim
        if o.name == "adamw":
            self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=o.lr, betas=o.betas,
                                               weight_decay=o.weight_decay)
        else:
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=o.lr, weight_decay=o.weight_decay)
        self.engine = RolloutEngine(self.model, cfg.offpolicy.staleness, cfg.offpolicy.rollout_dtype,
                                    cfg.offpolicy.partial_versions)
        op = cfg.offpolicy
        try:
            self.loss_params = algos.PolicyLossParams(cfg.algo.eps_low, cfg.algo.eps_high, cfg.algo.dual_clip_c)
            self.corr_params = algos.CorrectionParams(op.tis_cap, op.icepop_low, op.icepop_high,
                                                      op.seq_low, op.seq_high)
        except ValueError as e:
            raise ConfigError(f"algo/offpolicy settings: {e}") from None
        self.hooks: dict[str, list[Callable[[StepContext], None]]] = {p: [] for p in HOOK_POINTS}
        self.trust_region = trust_region.attach(self)  # None unless optim.trust_region_kl > 0
        self.collapse = CollapseDetector(cfg.run, self.model.config.vocab_size)
        self.start_step = 0
        self.version = 0  # optimizer steps taken
        self.status: dict[str, Any] = {"status": "running"}
        self.out.mkdir(parents=True, exist_ok=True)
        if resume:
            self._load_checkpoint()
        else:
            (self.out / "config.json").write_text(cfg.to_json())
            (self.out / "metrics.jsonl").write_text("")

    # -- hooks ---------------------------------------------------------------------------------
    def add_hook(self, point: str, fn: Callable[[StepContext], None]) -> None:
        if point not in self.hooks:
            raise ValueError(f"unknown hook point {point!r}; known: {', '.join(HOOK_POINTS)}")
        self.hooks[point].append(fn)

    def _fire(self, point: str, ctx: StepContext) -> None:
        for fn in self.hooks[point]:
            fn(ctx)

    # -- one step ------------------------------------------------------------------------------
    def sample_problems(self, step: int) -> list[Problem]:
        rng = np.random.default_rng([self.cfg.run.seed, step])
        base = self.task.sample(self.cfg.rollout.prompts_per_step, rng)
        return [p for p in base for _ in range(self.cfg.rollout.group_size)]

    def rollout(self, problems: list[Problem], step: int) -> Rollout:
        tok = self.tokenizer
        # A group's G rows are one Problem object: render and pad each run once, then repeat the rows.
        starts = [i for i in range(len(problems)) if i == 0 or problems[i] is not problems[i - 1]]
        counts = torch.tensor([b - a for a, b in zip(starts, [*starts[1:], len(problems)])])
        p_ids, p_mask = left_pad(render_prompts(tok, [problems[i] for i in starts], self.task.chat), tok.pad_token_id)
        p_ids, p_mask = p_ids.repeat_interleave(counts, 0), p_mask.repeat_interleave(counts, 0)
        g = torch.Generator(device=self.device).manual_seed(self.cfg.run.seed * 1_000_003 + step)
        self.engine.push(self.version)
        sampler, version = self.engine.model_for_sampling(0)
        m = self.engine.segments  # partial rollouts: segment j is sampled by engine.model_for_sampling(j)
        r = self.cfg.rollout
        try:
            return generate(sampler, p_ids.to(self.device), p_mask.to(self.device), self.budget,
                            tok.eos_token_id, tok.pad_token_id, g, r.temperature, r.top_k, r.top_p,
                            self.cfg.offpolicy.logit_noise, self.version if version < 0 else version,
                            segment_len=-(-self.budget // m) if m > 1 else 0,
                            advance=self.engine.model_for_sampling if m > 1 else None)
        except FloatingPointError as e:
            _finite_or_raise(torch.tensor(float("nan")), str(e), step, self.out)

    def grade(self, problems, ro: Rollout) -> tuple[list[str], torch.Tensor]:
        texts = self.tokenizer.batch_decode(ro.response_ids.cpu(), skip_special_tokens=True)
        trunc = ro.truncated.tolist()
        skip = [tr and not self.task.grade_truncated for tr in trunc]  # truncated = 0 unless the task says
        correct = [0.0 if sk else self.task.grade(p, t) for p, t, sk in zip(problems, texts, skip)]
        return texts, torch.tensor(correct, dtype=torch.float32, device=self.device)

    def _policy_logp(self, logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return algos.gather_logprobs(logits.float(), ids)

    def train_step(self, step: int) -> dict[str, Any]:
        cfg, a = self.cfg, self.cfg.algo
        t0 = time.perf_counter()
        problems = self.sample_problems(step)
        ro = self.rollout(problems, step)
        texts, correct = self.grade(problems, ro)
        t_roll = time.perf_counter() - t0

        t1 = time.perf_counter()
        resp_mask = ro.response_mask
        ids = ro.response_ids
        S, G = len(problems), cfg.rollout.group_size
        need_old_forward = not cfg.fully_on_policy or (a.kl_coef > 0 and a.kl_placement == "reward") \
            or a.token_filter != "all"
        old_logits = None
        if need_old_forward:
            with torch.no_grad():
                old_logits = response_logits(self.model, ro).float()
            _finite_or_raise(old_logits, "policy logits", step, self.out)
        ref_logits = None
        if a.kl_coef > 0:
            with torch.no_grad():
                ref_logits = response_logits(self.ref_model, ro).float()

        rewards = correct.clone()
        if a.length_penalty:
            rewards = rewards - a.length_penalty * ro.lengths / self.budget
        if a.kl_coef > 0 and a.kl_placement == "reward":
            old_lp = self._policy_logp(old_logits, ids)
            kl_tok = algos.KL_ESTIMATORS.get(a.kl_estimator)(
                old_lp, self._policy_logp(ref_logits, ids), torch.log_softmax(old_logits, -1),
                torch.log_softmax(ref_logits, -1))
            rewards = rewards - a.kl_coef * (kl_tok * resp_mask).sum(-1)
        adv = algos.ADVANTAGES.get(a.advantage)(rewards.view(S // G, G)).reshape(S)
        if a.hard_prompt_weight != 1.0:
            hard = correct.view(S // G, G).mean(-1, keepdim=True).expand(-1, G).reshape(S) < 0.5
            adv = torch.where(hard, adv * a.hard_prompt_weight, adv)

        mask = resp_mask.clone()
        if a.token_filter == "top_entropy":
            ent = algos.entropy_from_logits(old_logits)
            thresh = torch.quantile(ent[resp_mask > 0], 1.0 - a.token_filter_frac)
            mask = mask * (ent >= thresh).float()

        if old_logits is not None:
            old_logp = self._policy_logp(old_logits, ids)
            weights = algos.CORRECTIONS.get(cfg.offpolicy.correction)(
                old_logp - ro.rollout_logp, resp_mask, self.corr_params)
        else:
            old_logp = None
            weights = torch.ones_like(mask)
        token_adv = adv[:, None].expand_as(mask)

        ctx = StepContext(step=step, cfg=cfg, trainer=self, problems=problems, rollout=ro,
                          texts=texts, correct=correct, rewards=rewards, advantages=adv, mask=mask,
                          old_logits=old_logits, old_logp=old_logp, weights=weights,
                          ref_logits=ref_logits, version=self.version)
        if old_logits is not None:
            self._fire("after_rollout", ctx)

        losses, gnorms = [], []
        mb = S // cfg.offpolicy.mini_batches
        for epoch in range(cfg.offpolicy.epochs):
            if cfg.offpolicy.mini_batches > 1:
                g = torch.Generator().manual_seed(cfg.run.seed * 7919 + step * 131 + epoch)
                order = torch.randperm(S, generator=g)
            else:
                order = torch.arange(S)
            for k in range(cfg.offpolicy.mini_batches):
                idx = order[k * mb:(k + 1) * mb].to(self.device)
                sub = ro.select(idx)
                logits = response_logits(self.model, sub).float()
                _finite_or_raise(logits.detach(), "policy logits", step, self.out)
                logp = self._policy_logp(logits, sub.response_ids)
                logp.retain_grad()
                if ctx.old_logits is None:
                    # Fully on-policy: pi_old is this very forward, so ratio = exp(logp - logp.detach()) == 1.
                    ctx.old_logits = logits.detach()
                    ctx.old_logp = logp.detach()
                    self._fire("after_rollout", ctx)
                loss, parts = self.loss(logits, logp, ctx, idx)
                _finite_or_raise(loss.detach(), "loss", step, self.out)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                params = [p for p in self.model.parameters() if p.grad is not None]
                gnorm = torch.nn.utils.clip_grad_norm_(
                    params, cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf"))
                _finite_or_raise(gnorm, "gradient norm", step, self.out)
                ctx.update, ctx.index, ctx.logits, ctx.logp = len(losses), idx, logits.detach(), logp
                ctx.loss, ctx.loss_parts, ctx.grad_norm = loss.detach(), parts, float(gnorm)
                self._fire("after_backward", ctx)
                self.optimizer.step()
                if self.trust_region is not None:
                    self.trust_region.rescale(sub)  # step scaled to KL(pi_old || pi_new) = delta
                self.version += 1
                self._fire("after_optimizer_step", ctx)
                losses.append(loss.item())
                gnorms.append(float(gnorm))
        t_upd = time.perf_counter() - t1

        row: dict[str, Any] = {
            "step": step,
            "reward/mean": float(rewards.mean()),
            "reward/accuracy": float(correct.mean()),
            "response/length_mean": float(ro.lengths.float().mean()),
            "response/truncated_frac": float(ro.truncated.float().mean()),
            "loss": float(np.mean(losses)),
            "grad/norm": float(np.mean(gnorms)),
            "lr": float(self.optimizer.param_groups[0]["lr"]),
        }
        for name, v in ctx.loss_parts.items():
            row[f"loss/{name}"] = float(v)
        ctx.metrics = row
        self._fire("step_end", ctx)
        if "collapse/reason" not in row:
            hit = self.collapse.check(row, lambda: float(
                algos.entropy_from_logits(ctx.old_logits)[ctx.mask > 0].double().mean()))
            if hit:
                row["collapse/kind"], row["collapse/reason"] = hit
        row["time/rollout_s"] = t_roll
        row["time/update_s"] = t_upd
        row["time/step_s"] = time.perf_counter() - t0
        return row

    def loss(self, logits, logp, ctx: StepContext, idx) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss of one update = PG (x correction weights) + KL (if in the loss) - entropy bonus."""
        a = self.cfg.algo
        mask = ctx.mask[idx]
        agg = algos.AGGREGATIONS.get(a.loss_agg)
        pg_tok = algos.POLICY_LOSSES.get(a.policy_loss)(
            logp, ctx.old_logp[idx], ctx.advantages[idx][:, None].expand_as(mask), mask, self.loss_params)
        parts = {"pg": agg(pg_tok * ctx.weights[idx], mask, float(self.budget))}
        total = parts["pg"]
        if a.kl_coef > 0 and a.kl_placement == "loss":
            ref = ctx.ref_logits[idx]
            ids = ctx.rollout.response_ids[idx]
            kl_tok = algos.KL_ESTIMATORS.get(a.kl_estimator)(
                logp, self._policy_logp(ref, ids), torch.log_softmax(logits, -1), torch.log_softmax(ref, -1))
            parts["kl"] = agg(kl_tok, mask, float(self.budget))
            total = total + a.kl_coef * parts["kl"]
        if a.entropy_coef > 0:
            parts["entropy_bonus"] = agg(algos.entropy_from_logits(logits), mask, float(self.budget))
            total = total - a.entropy_coef * parts["entropy_bonus"]
        return total, {k: v.detach() for k, v in parts.items()}

    # -- the run -------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        from tqdm.auto import tqdm

        cfg = self.cfg
        bar = tqdm(range(self.start_step, cfg.run.steps), desc="train", disable=not self.progress,
                   initial=self.start_step, total=cfg.run.steps)
        try:
            with open(self.out / "metrics.jsonl", "a") as f:
                for step in bar:
                    try:
                        row = self.train_step(step)
                    except NonFiniteError as e:  # a NaN collapse: its row holds only the step and why
                        row = {"step": step, "collapse/kind": "nan", "collapse/reason": str(e)}
                    f.write(json.dumps(row) + "\n")
                    f.flush()
                    reason = row.get("collapse/reason")
                    if reason:  # before any checkpoint: the last good one is kept
                        self.status = {"status": "collapsed", "step": step,
                                       "kind": row.get("collapse/kind", "hook"), "reason": reason}
                        break
                    post = {k: f"{row[m]:.3f}" for k, m in (("reward", "reward/mean"),
                                                             ("entropy", "entropy/token_mean")) if m in row}
                    bar.set_postfix(post)
                    done = step + 1
                    if cfg.run.checkpoint_every and done % cfg.run.checkpoint_every == 0:
                        self.save_checkpoint(done)
            if self.status["status"] == "running":
                self.status = {"status": "finished", "step": cfg.run.steps - 1}
                self.save_checkpoint(cfg.run.steps)
        except TrainingError as e:
            self.status = {"status": "failed", "step": getattr(e, "step", None), "reason": str(e)}
            raise
        finally:
            bar.close()
            (self.out / "status.json").write_text(json.dumps(self.status, indent=2))
        return self.status

    # -- checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self, next_step: int) -> None:
        """Write checkpoint/state.pt atomically; weights with a NaN/Inf are not written (the last good
        checkpoint stays, and the next step's guard records the collapse)."""
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):
            return
        d = self.out / "checkpoint"
        d.mkdir(exist_ok=True)
        tmp = d / "state.pt.tmp"
        torch.save({"step": next_step, "version": self.version,
                    "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "engine": self.engine.state_dict(), "init_dir": self.init_dir}, tmp)
        tmp.replace(d / "state.pt")

    def _load_checkpoint(self) -> None:
        path = self.out / "checkpoint" / "state.pt"
        if not path.exists():
            raise ConfigError(f"--resume: no checkpoint at {path}; run without --resume or set run.checkpoint_every")
        saved_cfg = json.loads((self.out / "config.json").read_text())
        if saved_cfg != json.loads(self.cfg.to_json()) | {"run": saved_cfg["run"]}:
            raise ConfigError(f"--resume: the config differs from {self.out / 'config.json'} (only run.* may change)")
        st = torch.load(path, map_location=self.device, weights_only=False)
        self.model.load_state_dict(st["model"])
        self.optimizer.load_state_dict(st["optimizer"])
        self.engine.load_state_dict(st["engine"])
        self.start_step, self.version = st["step"], st["version"]
        # Keep only the rows the checkpoint covers: the continued run rewrites the rest identically.
        rows = [ln for ln in (self.out / "metrics.jsonl").read_text().splitlines()
                if ln.strip() and json.loads(ln)["step"] < self.start_step]
        (self.out / "metrics.jsonl").write_text("".join(r + "\n" for r in rows))
        for r in rows:  # the detector's streaks and kl/step history continue where they were
            self.collapse.check(json.loads(r))
        (self.out / "config.json").write_text(self.cfg.to_json())


def train(cfg: TrainConfig, out_dir: str | Path, progress: bool = True, resume: bool = False,
          setup: Optional[Callable[[Trainer], None]] = None) -> Trainer:
    """Build a trainer, let `setup` attach hooks (e.g. the probes' recorder), run it."""
    t = Trainer(cfg, out_dir, progress=progress, resume=resume)
    if setup is not None:
        setup(t)
    t.run()
    return t
