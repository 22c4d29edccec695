"""GRPO with TRL on a solidrl task, solidrl's probes attached (needs `pip install -e ".[trl]"`).

One process (CPU or one GPU), or many through accelerate (DDP or DeepSpeed ZeRO-1/2):

    .venv/bin/python scripts/trl_grpo.py --model nano --task addition --steps 30 --out runs/trl/grpo
    accelerate launch --num_processes 8 scripts/trl_grpo.py --model /models/SmolLM2-135M-Instruct \
        --task chat_addition --steps 200 --scale-rewards none --out runs/trl/none-s0

--model is a local Hugging Face model directory, or a named size (nano, micro, small: its cached cold
start). Writes OUT/trainer_state.json (TRL's log, with solidrl's rows merged in) and OUT/solidrl/
(metrics.jsonl, stats/, config.json) from the main process. --probes off gives plain TRL logging.
Then: probe-check HYP.toml --from-log baseline=OUT_A/trainer_state.json treatment=OUT_B/trainer_state.json
(docs/scaling.md).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="local HF model directory, or nano / micro / small")
    p.add_argument("--task", default="addition")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--prompts-per-step", type=int, default=64, help="per process")
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--scale-rewards", default="group", help="TRL: group (GRPO), none (Dr.GRPO), batch")
    p.add_argument("--loss-type", default="dapo", help="TRL: dapo, grpo, dr_grpo, bnpo, ...")
    p.add_argument("--max-completion-length", type=int, default=0, help="0 = the task's budget")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--probes", default="all", help="solidrl probe groups ('all', a comma list, or 'off')")
    p.add_argument("--bf16", action="store_true", help="bfloat16 mixed precision (GPU)")
    a = p.parse_args(argv)

    import torch
    from trl import GRPOConfig

    from solidrl.probes.integrations.trl_callback import SolidrlCallback, SolidrlGRPOTrainer, task_dataset, task_reward
    from solidrl.trainer.config import TrainConfig, apply_overrides
    from solidrl.trainer.model import MODEL_SIZES, load_pretrained
    from solidrl.trainer.tasks import get_task

    if a.model in MODEL_SIZES:
        from solidrl.trainer.sft import cold_start

        path = str(cold_start(apply_overrides(TrainConfig(), {"model.size": a.model, "task.name": a.task}),
                              progress=False))
    else:
        path = a.model
    model, tok = load_pretrained(path)
    budget = a.max_completion_length or get_task(a.task).max_new_tokens
    rows = a.prompts_per_step * a.group_size
    args = GRPOConfig(output_dir=a.out, use_cpu=not torch.cuda.is_available(), bf16=a.bf16,
                      per_device_train_batch_size=rows // a.grad_accum, gradient_accumulation_steps=a.grad_accum,
                      num_generations=a.group_size, max_completion_length=budget, temperature=1.0, top_k=0,
                      max_steps=a.steps, learning_rate=a.lr, lr_scheduler_type="constant", max_grad_norm=0.0,
                      scale_rewards=a.scale_rewards, loss_type=a.loss_type, shuffle_dataset=False, seed=a.seed,
                      logging_steps=1, report_to=[], save_strategy="no", disable_tqdm=True)
    callbacks = [] if a.probes == "off" else [SolidrlCallback(Path(a.out) / "solidrl", probes={"groups": a.probes},
                                                              task=a.task)]
    # Every process draws the same per-step prompt list; TRL's sampler gives each its slice.
    n_proc = max(1, int(__import__("os").environ.get("WORLD_SIZE", "1")))
    ds = task_dataset(a.task, tok, a.prompts_per_step * n_proc, a.steps + 1, seed=a.seed)
    trainer = SolidrlGRPOTrainer(model=model, reward_funcs=[task_reward(a.task, tok.eos_token_id)], args=args,
                                 train_dataset=ds, processing_class=tok, callbacks=callbacks)
    trainer.train()
    trainer.save_state()  # OUT/trainer_state.json
    return 0


if __name__ == "__main__":
    sys.exit(main())
