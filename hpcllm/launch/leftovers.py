"""What an interrupted ``hpcllm submit`` leaves in a run folder, removed by the next one.

``atomic_write_text`` writes ``.<name>.<random>.tmp`` beside the file and renames it; a Ctrl-C or a
kill between the two leaves the temp file. Only the temp files of what ``submit`` alone writes are removed
(``job.sbatch``, ``run.yaml``), and only by a submit holding the grid's submit lock, so nobody is
writing them; the manifest's and the engine's temp files (a summary being written) are not touched.
"""

from __future__ import annotations

import contextlib

from hpcllm.fsutil import writing
from hpcllm.rundir import RunDir


def prepare_folder(run_dir: RunDir) -> list[str]:
    """Create the run folder (a full or read-only disk: one line) and remove what an earlier,
    interrupted submit left in it; the caller holds the grid's submit lock. Returns what went."""
    with writing(run_dir.path):
        run_dir.path.mkdir(parents=True, exist_ok=True)
    return remove_leftovers(run_dir)


def remove_leftovers(run_dir: RunDir) -> list[str]:
    """Remove temp files of earlier, interrupted submits; return their names."""
    gone = []
    for name in (run_dir.job_script.name, run_dir.config.name):
        for tmp in run_dir.path.glob(f".{name}.*.tmp"):
            with contextlib.suppress(OSError):
                tmp.unlink()
                gone.append(tmp.name)
    return gone
