"""`python -m app.serve [uvicorn arguments]`: uvicorn, after emptying the metrics directory.

With several web workers the instance's metrics live in `PROMETHEUS_MULTIPROC_DIR`
(`app.core.metrics`); files left by an earlier run would be added to this one's, so the
directory is emptied before uvicorn starts its workers, which inherit the variable. The image's
command; without the variable it only starts uvicorn.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

# app.core.metrics' variable; not imported from there, since importing it creates this
# process's metric files in the directory before it is emptied.
MULTIPROCESS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def empty_metrics_directory() -> None:
    directory = os.environ.get(MULTIPROCESS_DIR_VARIABLE)
    if not directory:
        return
    path = Path(directory)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)


def main(argv: list[str]) -> None:
    empty_metrics_directory()
    # Replaces this process: uvicorn gets its signals and its exit status is the container's.
    os.execv(sys.executable, [sys.executable, "-m", "uvicorn", *argv])  # noqa: S606


if __name__ == "__main__":
    main(sys.argv[1:])
