"""The run-folder lock (cocu.utils.lock): one writer at a time, a clear error naming the holder's pid,
readers never blocked, released when the holder dies; and `cocu train` into a locked folder."""

import os
import signal
import subprocess
import sys

import pytest

from cocu.cli import main
from cocu.utils.lock import LOCK_FILE, FolderLocked, folder_lock, lock_holder

SECOND_WRITER = """
import sys
from cocu.utils.lock import FolderLocked, folder_lock
try:
    with folder_lock(sys.argv[1], purpose="second"):
        print("acquired")
except FolderLocked as err:
    print(err)
"""

READER = """
import sys
from pathlib import Path
from cocu.utils.lock import lock_holder
print(Path(sys.argv[1], "metrics.jsonl").read_text().strip(), "|", lock_holder(sys.argv[1]))
"""

HOLDER = """
import sys
from cocu.utils.lock import folder_lock
with folder_lock(sys.argv[1], purpose="holder"):
    print("held", flush=True)
    sys.stdin.read()
"""


def _python(code: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60, **kwargs)


def test_second_writer_gets_a_clear_error_naming_the_holders_pid_and_a_reader_is_not_blocked(tmp_path):
    run = tmp_path / "run"
    with folder_lock(run, purpose="cocu train"):
        (run / "metrics.jsonl").write_text('{"step": 1}\n')
        second = _python(SECOND_WRITER, str(run))
        assert second.returncode == 0, second.stderr
        assert "acquired" not in second.stdout
        assert f"pid {os.getpid()} on " in second.stdout and "cocu train" in second.stdout
        reader = _python(READER, str(run))
        assert reader.returncode == 0, reader.stderr
        assert reader.stdout.startswith('{"step": 1} | pid ')
        with pytest.raises(FolderLocked, match=f"pid {os.getpid()}"):  # another open of the file, same process
            with folder_lock(run):
                pass
    assert _python(SECOND_WRITER, str(run)).stdout.strip() == "acquired"  # released at the end of the block
    assert lock_holder(run).endswith(", second") and (run / LOCK_FILE).is_file()


def test_lock_of_a_killed_holder_is_released_by_the_operating_system(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderLocked, match=f"pid {holder.pid} on .*holder"):
            with folder_lock(tmp_path):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    with folder_lock(tmp_path, purpose="after"):
        assert lock_holder(tmp_path).startswith(f"pid {os.getpid()} ")


def test_cocu_train_into_a_locked_output_folder_stops_at_once_naming_the_holder(tmp_path, capsys):
    out = tmp_path / "out"
    with folder_lock(out, purpose="cocu curate"):
        rc = main(["train", "clip_tiny_synth.yaml", f"output={out}", f"data.train={tmp_path}/missing", "train.device=cpu"])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"is in use by another cocu run (pid {os.getpid()} on " in err and "cocu curate" in err
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # nothing written
