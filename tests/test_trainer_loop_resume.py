"""Resume: a run stopped after 2 steps and resumed to 4 writes the same rows as a straight 4-step run,
for every off-policy knob, with every probe attached; the refusals (--resume shorter than the steps
done, a checkpoint that needs pickle) and the repairs (a torn last line, --overwrite) of issue 16."""
from __future__ import annotations

import json
import pickle

import pytest
import torch

from solidrl.probes.commands import cli
from solidrl.probes.probeset import attach_probes
from solidrl.trainer.config import ConfigError, TrainConfig, apply_overrides
from solidrl.trainer.loop import Trainer

from conftest import read_rows, strip_time, tiny_overrides


def _cfg(steps: int, **over) -> TrainConfig:
    return apply_overrides(TrainConfig(), tiny_overrides(**{"run.steps": steps, "run.checkpoint_every": 2,
                                                           "probes.audit_every": 0, **over}))


def _run(out, steps: int, resume: bool = False, **over) -> dict:
    t = Trainer(_cfg(steps, **over), out, progress=False, resume=resume)
    attach_probes(t)
    return t.run()


KNOBS = {
    "staleness2": {"offpolicy.staleness": 2},
    "partial": {"offpolicy.partial_versions": 2},
    "epochs": {"offpolicy.epochs": 2},
    "mini_batches": {"offpolicy.mini_batches": 2},
    "bf16": {"offpolicy.rollout_dtype": "bfloat16"},
    "noisy": {"offpolicy.logit_noise": 0.5},
}


def _equivalent(tmp_path, over) -> list[dict]:
    _run(tmp_path / "straight", 4, **over)
    _run(tmp_path / "resumed", 2, **over)  # stopped after 2 steps (the checkpoint at 2 is the kill point)
    _run(tmp_path / "resumed", 4, resume=True, **over)
    a, b = (strip_time(read_rows(tmp_path / d)) for d in ("straight", "resumed"))
    assert [r["step"] for r in a] == [0, 1, 2, 3]
    assert a == b
    for d in ("straight", "resumed"):
        assert json.loads((tmp_path / d / "status.json").read_text())["status"] == "finished"
    return a


def test_resume_is_identical_under_staleness_2(tmp_path):
    rows = _equivalent(tmp_path, KNOBS["staleness2"])
    # the per-version state of the off-policy probe is rebuilt: the lagged steps' predictions are there
    assert all("pred/ratio_decomposition/rollout_ratio/log_var" in r for r in rows[2:])


@pytest.mark.slow
@pytest.mark.parametrize("knob", [k for k in KNOBS if k != "staleness2"])
def test_resume_is_identical_for_every_knob(tmp_path, knob):
    _equivalent(tmp_path, KNOBS[knob])


def test_resume_with_fewer_steps_than_done_is_refused(tmp_path):
    _run(tmp_path, 4)
    ck = (tmp_path / "checkpoint" / "state.pt").read_bytes()
    rows = (tmp_path / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError, match="give --steps >= 4"):
        Trainer(_cfg(2), tmp_path, progress=False, resume=True)
    assert (tmp_path / "checkpoint" / "state.pt").read_bytes() == ck  # nothing touched
    assert (tmp_path / "metrics.jsonl").read_text() == rows


def test_a_checkpoint_that_needs_pickle_is_refused_and_runs_nothing(tmp_path):
    _run(tmp_path, 2, **{"probes.enabled": False})
    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):  # unpickling it would call open(marker, "w"): a file appears
            return (open, (str(marker), "w"))

    st = torch.load(tmp_path / "checkpoint" / "state.pt", weights_only=True)
    st["engine"] = Payload()
    torch.save(st, tmp_path / "checkpoint" / "state.pt")
    assert not marker.exists()
    torch.load(tmp_path / "checkpoint" / "state.pt", weights_only=False)  # the control: the payload is live
    assert marker.exists()
    marker.unlink()
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "checkpoint" / "state.pt", weights_only=True)
    with pytest.raises(ConfigError, match="need pickle") as e:
        Trainer(_cfg(4, **{"probes.enabled": False}), tmp_path, progress=False, resume=True)
    assert "\n" not in str(e.value)
    assert not marker.exists()


def test_a_torn_last_line_is_dropped_on_resume(tmp_path, capsys):
    over = {"probes.enabled": False}
    _run(tmp_path / "straight", 3, **over)
    _run(tmp_path / "r", 2, **over)
    with open(tmp_path / "r" / "metrics.jsonl", "a") as f:
        f.write('{"step": 2, "reward/me')  # a write cut short
    _run(tmp_path / "r", 3, resume=True, **over)
    assert "torn last line" in capsys.readouterr().err
    assert strip_time(read_rows(tmp_path / "r")) == strip_time(read_rows(tmp_path / "straight"))


def test_overwrite_clears_the_old_run(tmp_path, capsys):
    out = tmp_path / "run"
    base = ["train", "--out", str(out), "--quiet", "--set", "rollout.prompts_per_step=8",
            "--set", "rollout.group_size=4", "--set", "probes.groups=step,pred", "--set", "probes.audit_every=0"]
    assert cli.main(base + ["--steps", "3"]) == 0
    assert len(list((out / "stats").glob("step_*.pt"))) == 3
    (out / "notes.txt").write_text("mine")  # not a run file: stays
    assert cli.main(base + ["--steps", "1", "--overwrite"]) == 0
    assert sorted(p.name for p in (out / "stats").glob("step_*.pt")) == ["step_000000.pt"]
    assert [r["step"] for r in read_rows(out)] == [0]
    assert (out / "notes.txt").read_text() == "mine"
    capsys.readouterr()
    assert cli.main(base + ["--steps", "3", "--resume"]) == 0  # a later resume continues the new run
    assert [r["step"] for r in read_rows(out)] == [0, 1, 2]
