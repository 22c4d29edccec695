"""--report-to: what the trackers hold, read back from their own files, equals metrics.jsonl.

TensorBoard: the event files through tensorboard's EventAccumulator (scalars are stored as float32, so
each value is compared with float32(row value), exactly). wandb: the offline run's transaction log
(run-<id>.wandb), parsed here with wandb's own protobuf Record (values are JSON, compared exactly).
"""
from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from conftest import read_rows, tiny_overrides
from solidrl.probes.commands import cli
from solidrl.probes.integrations import trackers


def _train_args(out: Path, *extra: str) -> list[str]:
    sets = [x for k, v in tiny_overrides(**{"run.steps": 2}).items() for x in ("--set", f"{k}={v}")]
    return ["train", "--task", "addition", "--model-size", "nano", "--quiet", "--out", str(out), *sets, *extra]


@pytest.fixture(scope="module")
def reported_run(tmp_path_factory):
    """One 2-step nano run sent to tensorboard and wandb, with no API key and no WANDB_MODE (-> offline)."""
    d = tmp_path_factory.mktemp("report") / "run"
    home = d.parent / "home"
    home.mkdir()
    saved = {k: os.environ.get(k) for k in ("HOME", "WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR")}
    os.environ["HOME"] = str(home)  # no ~/.netrc, no ~/.config/wandb: nothing to find a key in
    for k in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR"):
        os.environ.pop(k, None)
    try:
        assert cli.main(_train_args(d, "--report-to", "tensorboard", "wandb")) == 0
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return d


def _numeric(rows):
    return [(r["step"], k, v) for r in rows for k, v in r.items() if k != "step" and isinstance(v, (int, float))]


def test_tensorboard_scalars_equal_metrics_jsonl(reported_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows = read_rows(reported_run)
    assert [r["step"] for r in rows] == [0, 1]
    ea = EventAccumulator(str(reported_run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    ea.Reload()
    want = _numeric(rows)
    assert set(ea.Tags()["scalars"]) == {k for _, k, _ in want}  # every number of every row, nothing else
    for step, k, v in want:
        got = {e.step: e.value for e in ea.Scalars(k)}
        assert len(got) == sum(k in r for r in rows), k  # some keys are logged on some steps only
        assert got[step] == np.float32(v) or (math.isnan(v) and math.isnan(got[step])), (k, step, v, got[step])
    # the config, as a text block and as hparams
    text = ea.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    cfg = json.loads((reported_run / "config.json").read_text())
    assert json.loads(text.strip("`\n")) == trackers.flatten(cfg)
    assert "_hparams_/experiment" in ea.PluginTagToContent("hparams")


def _wandb_records(run_file: Path):
    """Records of a .wandb transaction log: a 7-byte header (':W&B', magic 0xBEE1, version 0), then
    LevelDB-log framing: 32 KiB blocks of chunks, each `<crc32:u32><length:u16><type:u8>` + payload,
    type 1 = a whole record, 2/3/4 = first/middle/last piece; a block's tail under 7 bytes is padding."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = run_file.read_bytes()
    assert struct.unpack("<4sHB", data[:7]) == (b":W&B", 0xBEE1, 0)
    pos, buf, out, block = 7, b"", [], 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, n, typ = struct.unpack("<IHB", data[pos:pos + 7])
        pos += 7
        buf += data[pos:pos + n]
        pos += n
        if typ in (1, 4):
            r = pb.Record()
            r.ParseFromString(buf)
            out.append(r)
            buf = b""
        elif typ == 0 and n == 0:  # zero fill at a block's end
            pos += (block - pos % block) % block
    return out


def test_wandb_offline_run_holds_every_row_and_the_config(reported_run):
    runs = sorted((reported_run / "wandb").glob("offline-run-*"))
    assert len(runs) == 1  # offline by default: no key anywhere
    recs = _wandb_records(next(runs[0].glob("run-*.wandb")))
    hist = {}
    for r in recs:
        if r.WhichOneof("record_type") == "history":
            items = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
            hist[items["_step"]] = items
    rows = read_rows(reported_run)
    assert sorted(hist) == [r["step"] for r in rows]
    for step, k, v in _numeric(rows):
        assert hist[step][k] == v or (math.isnan(v) and hist[step][k] in ("NaN", None)), (k, step)
    run = next(r.run for r in recs if r.WhichOneof("record_type") == "run")
    cfg = {i.key: json.loads(i.value_json) for i in run.config.update if not i.key.startswith("_")}
    assert cfg == trackers.flatten(json.loads((reported_run / "config.json").read_text()))


def test_wandb_key_found_in_netrc_or_env(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    assert not trackers._wandb_has_key()
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password abc123\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert trackers._wandb_has_key()
    (tmp_path / ".netrc").unlink()
    monkeypatch.setenv("WANDB_API_KEY", "k")
    assert trackers._wandb_has_key()


def test_missing_extra_is_one_line_exit_2_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(trackers.TRACKERS.get("trackio"), "module", "no_such_module_for_the_test")
    out = tmp_path / "run"
    assert cli.main(_train_args(out, "--report-to", "tensorboard,trackio")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("solidrl train: error: --report-to: trackio needs the 'no_such_module_for_the_test' package; "
                       "install it with .venv/bin/pip install -e '.[trackio]' (or pip install 'solidrl[trackio]')")
    assert not out.exists()  # nothing trained, nothing written


def test_unknown_tracker_lists_the_known(tmp_path, capsys):
    assert cli.main(_train_args(tmp_path / "r", "--report-to", "comet")) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "solidrl train: error: --report-to: unknown tracker 'comet'; known: tensorboard, wandb, trackio, none")


def test_parse_report_to_forms():
    assert trackers.parse_report_to(["tensorboard,wandb", "wandb"]) == ("tensorboard", "wandb")
    assert trackers.parse_report_to(["none"]) == ()
    assert trackers.parse_report_to(None) == ()


def test_row_follower_waits_for_a_complete_line(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"step": 0}\n')
    f = trackers.RowFollower(p)  # from the end: rows already there were sent by an earlier run
    assert f.rows() == []
    with open(p, "a") as fh:
        fh.write('{"step": 1}\n{"ste')
    assert f.rows() == [{"step": 1}]
    with open(p, "a") as fh:
        fh.write('p": 2}\n')
    assert f.rows() == [{"step": 2}]
    assert trackers.RowFollower(p, from_end=False).rows() == [{"step": 0}, {"step": 1}, {"step": 2}]


@pytest.mark.slow
def test_trackio_local_store_holds_every_row(tmp_path):
    """trackio reads TRACKIO_DIR at import: a subprocess with its own store, read back from its sqlite store."""
    import subprocess
    import sys

    out = tmp_path / "run"
    env = dict(os.environ, TRACKIO_DIR=str(tmp_path / "store"), TRACKIO_PROJECT="t")
    subprocess.run([sys.executable, "-m", "solidrl.probes.commands.cli", *_train_args(out, "--report-to", "trackio")],
                   check=True, env=env, capture_output=True)
    code = ("import json; from trackio.sqlite_storage import SQLiteStorage as S; "
            "print(json.dumps(S.get_logs('t', run='run'), default=str))")
    got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    hist = json.loads(got.stdout.strip().splitlines()[-1])
    rows = read_rows(out)
    by_step = {h["step"]: h for h in hist}
    for step, k, v in _numeric(rows):
        assert by_step[step][k] == v or (math.isnan(v) and math.isnan(by_step[step][k])), (k, step)


def test_a_failing_tracker_is_dropped_with_one_line_and_the_others_go_on(capsys):
    got = []

    class Broken(trackers.Tracker):
        def start(self, run_name, config):
            pass

        def log(self, row, step):
            raise OSError("disk full\nsecond line")

    class Fine(trackers.Tracker):
        def log(self, row, step):
            got.append((step, row))

    m = trackers.Multi([Broken("."), Fine(".")])
    m.log({"a": 1.0}, 0)
    m.log({"a": 2.0}, 1)
    assert got == [(0, {"a": 1.0}), (1, {"a": 2.0})]
    err = capsys.readouterr().err
    assert err == "--report-to: broken failed in log (OSError: disk full); it gets nothing more, the run goes on\n"
