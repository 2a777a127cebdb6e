"""The command line ends every failure with one line naming its cause (tests/runs/test_cli.py)."""
from __future__ import annotations

import errno

import pytest

from improve_lib.runs import cli


@pytest.mark.parametrize("error,code,line", [
    (KeyboardInterrupt(), 130, "interrupted (Ctrl-C): stopped"),
    (OSError(errno.ENOSPC, "No space left on device", "/runs/x/tables/t.csv"), 1,
     "error: cannot write or read /runs/x/tables/t.csv: No space left on device"),
    (PermissionError(errno.EROFS, "Read-only file system", "/runs/x"), 1, "Read-only file system"),
])
def test_interrupts_and_file_system_refusals_are_one_line(monkeypatch, capsys, error, code, line):
    def fail(*args, **kwargs):
        raise error
    monkeypatch.setattr(cli, "run_pipeline", fail)
    assert cli.main(["run", "--profile", "smoke"]) == code
    err = capsys.readouterr().err.strip()
    assert line in err and len(err.splitlines()) == 1
