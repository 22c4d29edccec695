"""Cold start: supervised fine-tuning of a named size on a task's reference solutions.

RL needs a policy with room to improve: SFT runs until the sampled pass@1 at temperature 1 (the
RL sampling distribution) reaches `sft.target_accuracy` (default 0.35, inside the useful 20-70%
band), then stops. The checkpoint is a normal Hugging Face model directory (model + tokenizer),
cached under a hash of everything that determines it, so repeated runs and all RL seeds reuse it.
"""
from __future__ import annotations

import dataclasses
import fcntl
import os
import hashlib
import inspect
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from . import model as model_mod
from . import rollout as rollout_mod
from . import tasks as tasks_mod
from . import tokenizer as tokenizer_mod
from .config import TrainConfig
from .model import MODEL_SIZES, build_model, cache_dir, float32_default, is_terminal
from .rollout import Rollout, generate, left_pad, response_logits
from .tasks import TASKS, Task, get_task
from .tokenizer import ALPHABET, build_char_tokenizer, encode_prompts


_KEY_FILES = (model_mod.__file__, rollout_mod.__file__, tokenizer_mod.__file__, __file__)


def sft_key(cfg: TrainConfig) -> str:
    """Cache key of a cold start: model size, task, budget, SFT settings and tokenizer alphabet."""
    # The code that determines a cold start is part of its key: a change to it invalidates the cache.
    # That is the task's class (and its bases) and the whole of the modules the SFT loop runs: this
    # file, the model builder, the tokenizer and rollout.py (the forward and the sampler). Hashing only
    # the functions it calls by name missed a change to response_logits' summation order, and a cached
    # cold start from older code then differed from the one a fresh clone trains.
    task_cls = TASKS.get(cfg.task.name)
    code = "".join(inspect.getsource(c) for c in task_cls.__mro__  # built in, or a plugin's (trainer/plugins.py)
                   if c.__module__ == tasks_mod.__name__ or c.__module__.startswith("solidrl_plugin_"))
    code += "".join(Path(f).read_text() for f in _KEY_FILES)
    payload = {"size": repr(MODEL_SIZES.get(cfg.model.size)), "task": cfg.task.name, "dtype": cfg.model.dtype,
               "sft": dataclasses.asdict(cfg.sft), "alphabet": ALPHABET,
               "code": hashlib.sha256(code.encode()).hexdigest()}
    if cfg.entry_params("task.name"):  # a task's parameters change its problems (absent: keys stay as they were)
        payload["task_params"] = cfg.entry_params("task.name")
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]
    return f"{cfg.task.name}-{cfg.model.size}-{digest}"


def sft_dir(cfg: TrainConfig) -> Path:
    return cache_dir() / "sft" / sft_key(cfg)


def supervised_batch(tokenizer, problems, eos_id: int, pad_id: int) -> Rollout:
    """Prompts left-padded, reference solutions + EOS right-padded, as a Rollout (no sampler log-probs)."""
    p_ids, p_mask = left_pad(encode_prompts(tokenizer, [p.prompt for p in problems]), pad_id)
    sols = [tokenizer(p.solution, add_special_tokens=False)["input_ids"] + [eos_id] for p in problems]
    R = max(len(s) for s in sols)
    r_ids = torch.full((len(sols), R), pad_id, dtype=torch.long)
    r_mask = torch.zeros((len(sols), R))
    for i, s in enumerate(sols):
        r_ids[i, :len(s)] = torch.tensor(s)
        r_mask[i, :len(s)] = 1.0
    return Rollout(p_ids, p_mask, r_ids, r_mask, torch.zeros_like(r_mask),
                   torch.zeros(len(sols), dtype=torch.bool))


@torch.no_grad()
def sampled_accuracy(model, tokenizer, task: Task, problems, max_new_tokens: int, seed: int,
                     temperature: float = 1.0) -> float:
    """pass@1 at `temperature`: the fraction of single samples graded correct (truncated = wrong)."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    p_ids, p_mask = left_pad(encode_prompts(tokenizer, [p.prompt for p in problems]), pad)
    g = torch.Generator().manual_seed(seed)
    r = generate(model, p_ids, p_mask, max_new_tokens, eos, pad, g, temperature=temperature)
    texts = tokenizer.batch_decode(r.response_ids, skip_special_tokens=True)
    ok = [0.0 if tr else task.grade(p, t) for p, t, tr in zip(problems, texts, r.truncated.tolist())]
    return float(np.mean(ok))


@float32_default
def run_sft(cfg: TrainConfig, out_dir: Optional[Path] = None, progress: bool = True) -> Path:
    """Train a cold start and save it (model + tokenizer + sft.json) to `out_dir`; returns the dir.

    Runs at one torch thread whatever the caller set: the thread count changes float32 summation
    order, and one cache key must mean one set of weights whether `solidrl sft` (torch's default
    threads), probe-check (one thread per run) or a test trained it first.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run_sft(cfg, out_dir, progress)
    finally:
        torch.set_num_threads(threads)


def _run_sft(cfg: TrainConfig, out_dir: Optional[Path], progress: bool) -> Path:
    out_dir = Path(out_dir) if out_dir else sft_dir(cfg)
    task = get_task(cfg.task.name, **cfg.entry_params("task.name"))
    budget = cfg.task.max_new_tokens or task.max_new_tokens
    tok = build_char_tokenizer()
    s = cfg.sft
    model = build_model(cfg.model.size, len(tok), seed=s.seed, dtype=cfg.model.dtype)
    lr = s.lr if s.lr is not None else MODEL_SIZES.get(cfg.model.size).sft_lr
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    eos, pad = tok.eos_token_id, tok.pad_token_id
    eval_problems = task.sample(s.eval_prompts, np.random.default_rng([s.seed, 10**6]))
    history = []
    acc = 0.0
    # SFT stops at the target accuracy, usually long before max_steps: an open-ended bar (steps so far, no
    # total, no ETA) with the accuracy against the target; in a pipe or file, one line at the end instead.
    live = progress and is_terminal(sys.stderr)
    what = f"sft {cfg.task.name}/{cfg.model.size}"
    bar = tqdm(desc=f"{what} until pass@1 >= {s.target_accuracy:g} (at most {s.max_steps} steps)", total=None,
               unit="step", disable=not live, leave=False)
    t0 = time.perf_counter()
    for step in range(1, s.max_steps + 1):
        bar.update(1)
        problems = task.sample(s.batch_size, np.random.default_rng([s.seed, step]))
        batch = supervised_batch(tok, problems, eos, pad)
        logits = response_logits(model, batch)
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), batch.response_ids.reshape(-1), reduction="none")
        loss = (nll * batch.response_mask.reshape(-1)).sum() / batch.response_mask.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % s.eval_every == 0:
            model.eval()
            acc = sampled_accuracy(model, tok, task, eval_problems, budget, seed=s.seed + step)
            model.train()
            history.append({"step": step, "loss": loss.item(), "pass@1_t1": acc})
            bar.set_postfix(loss=f"{loss.item():.3f}", pass1=f"{acc:.2f}/{s.target_accuracy:g}")
            if acc >= s.target_accuracy:
                break
    bar.close()
    if progress:
        print(f"{what}: cold start in {step} steps, {time.perf_counter() - t0:.1f} s, pass@1 at T=1 {acc:.3f} "
              f"({'reached' if acc >= s.target_accuracy else 'did not reach'} the target {s.target_accuracy:g})",
              file=sys.stderr, flush=True)
    tmp = out_dir.with_name(f"{out_dir.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with model_mod.no_progress_bars():
        model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "sft.json").write_text(json.dumps(
        {"key": sft_key(cfg), "task": cfg.task.name, "size": cfg.model.size, "steps": step,
         "final_pass@1_t1": acc, "reached_target": acc >= s.target_accuracy,
         "history": history, "sft": dataclasses.asdict(s)}, indent=2))
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)  # atomic: a half-written cold start is never picked up from the cache
    return out_dir


@float32_default
def cold_start(cfg: TrainConfig, progress: bool = True) -> Path:
    """The cached cold start for this config's size and task (trained on first use)."""
    d = sft_dir(cfg)
    if (d / "sft.json").exists():
        return d
    d.parent.mkdir(parents=True, exist_ok=True)
    # One process trains a given cold start; others (parallel tests, probe-check arms) wait for it.
    with open(d.parent / f"{d.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (d / "sft.json").exists():
            return d
        return run_sft(cfg, d, progress=progress)
