"""Atomic writes (trainer/io.py): a write that fails (a full disk, simulated) never destroys the previous
good file, for status.json, report.json/report.md and the trainer's config; appends are whole lines."""
from __future__ import annotations

import errno
import json
import os

import pytest

from solidrl.probes.check import report
from solidrl.probes.check.verdict import method_info
from solidrl.trainer import io as tio


def _enospc(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temp(tmp_path, monkeypatch):
    f = tmp_path / "status.json"
    tio.atomic_write_json(f, {"status": "finished", "step": 3})
    good = f.read_text()
    for target in ("fsync", "replace"):
        with monkeypatch.context() as m:
            m.setattr(tio.os, target, _enospc)
            with pytest.raises(OSError) as e:
                tio.atomic_write_json(f, {"status": "running"})
            assert e.value.errno == errno.ENOSPC
        assert f.read_text() == good and json.loads(good)["status"] == "finished"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["status.json"]  # no temp file left


def test_a_failed_write_mid_text_keeps_the_previous_file(tmp_path, monkeypatch):
    """A disk that fills after part of the text was written: the old file is still whole."""
    f = tmp_path / "report.md"
    tio.atomic_write_text(f, "# old report\n")
    real_fdopen = os.fdopen

    class Half:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.fh.close()

        def write(self, s):
            self.fh.write(s[: len(s) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tio.os, "fdopen", lambda fd, *a, **k: Half(real_fdopen(fd, *a, **k)))
    with pytest.raises(OSError):
        tio.atomic_write_text(f, "# new report\n" * 1000)
    assert f.read_text() == "# old report\n"


def test_report_write_failure_keeps_the_previous_report(tmp_path, monkeypatch):
    result = {"hypothesis": {"name": "h", "claim": "c"}, "mode": "quick", "steps": 2, "seeds": [0],
              "summary": {"confirmed": 0, "refuted": 0, "inconclusive": 0}, "exit_code": 0, "predictions": [],
              "runs": [], "method": method_info()}
    report.write(result, tmp_path, plots=False)
    good = {n: (tmp_path / n).read_text() for n in ("report.json", "report.md")}
    assert json.loads(good["report.json"])["exit_code"] == 0
    monkeypatch.setattr(tio.os, "replace", _enospc)
    with pytest.raises(OSError):
        report.write(dict(result, exit_code=1), tmp_path, plots=False)
    assert {n: (tmp_path / n).read_text() for n in good} == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "report.md"]


def test_torn_tail_is_dropped_and_whole_lines_kept():
    rows, torn = tio.split_torn_tail('{"step": 0}\n{"step": 1}\n{"step": 2, "x')
    assert [r["step"] for r in rows] == [0, 1] and torn
    rows, torn = tio.split_torn_tail('{"step": 0}\n{"step": 1}\n', before_step=1)
    assert [r["step"] for r in rows] == [0] and not torn
