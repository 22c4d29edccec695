"""NaN and overflow with the default probes end as `collapsed`, kind nan: the earlier rows are kept, the
NaN step's row is written, status.json says so, and the command exits 1 with the reason (issue 16)."""
from __future__ import annotations

import json

import pytest
import torch

from solidrl.probes.commands import cli
from solidrl.probes.probeset import attach_probes
from solidrl.trainer.config import TrainConfig, apply_overrides
from solidrl.trainer.loop import Trainer

from conftest import read_rows, tiny_overrides


def _status(d):
    return json.loads((d / "status.json").read_text())


@pytest.mark.parametrize("over", [
    {"optim.name": "sgd", "optim.lr": "1e12"},      # NaN weights: the recorder's probe forward sees them
    {"offpolicy.logit_noise": "1e40"},              # overflow in the sampler
    {"optim.lr": "1e38"},                           # AdamW's step size overflows float32
])
def test_nan_and_overflow_with_default_probes_collapse(tmp_path, capsys, over):
    argv = ["train", "--out", str(tmp_path), "--quiet", "--steps", "2", "--set", "rollout.prompts_per_step=8",
            "--set", "rollout.group_size=4"] + [a for k, v in over.items() for a in ("--set", f"{k}={v}")]
    assert cli.main(argv) == 1
    st = _status(tmp_path)
    assert st["status"] == "collapsed" and st["kind"] == "nan" and st["step"] == 0
    rows = read_rows(tmp_path)
    assert len(rows) == 1 and rows[0]["step"] == 0 and rows[0]["collapse/kind"] == "nan"
    assert "collapse (nan) at step 0" in capsys.readouterr().out


def test_a_nan_at_step_1_keeps_step_0_with_every_probe(tmp_path):
    cfg = apply_overrides(TrainConfig(), tiny_overrides(**{"run.steps": 3, "probes.audit_every": 0}))
    t = Trainer(cfg, tmp_path, progress=False)
    attach_probes(t)

    def poison(ctx):  # the weights go NaN in step 1's update, as a diverging optimizer would make them
        if ctx.step == 1:
            with torch.no_grad():
                next(ctx.model.parameters()).fill_(float("nan"))

    t.add_hook("after_optimizer_step", poison)
    status = t.run()
    assert status["status"] == "collapsed" and status["kind"] == "nan" and status["step"] == 1
    rows = read_rows(tmp_path)
    assert [r["step"] for r in rows] == [0, 1]
    assert "entropy/token_mean" in rows[0] and "collapse/kind" not in rows[0]  # step 0's full row kept
    assert rows[1]["collapse/kind"] == "nan" and "non-finite" in rows[1]["collapse/reason"]
    assert _status(tmp_path) == status


def test_a_crash_in_a_hook_leaves_status_failed_not_running(tmp_path):
    cfg = apply_overrides(TrainConfig(), tiny_overrides(**{"run.steps": 2, "probes.enabled": False}))
    t = Trainer(cfg, tmp_path, progress=False)

    def boom(ctx):
        raise KeyError("a bug in a hook")

    t.add_hook("step_end", boom)
    with pytest.raises(KeyError):
        t.run()
    st = _status(tmp_path)
    assert st["status"] == "failed" and "KeyError" in st["reason"]
