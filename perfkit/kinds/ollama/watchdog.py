"""The restore watchdog's process: ``python -m perfkit.kinds.ollama.watchdog RECORD`` (see perfkit.kinds.ollama.restore).

It prints the watchdog's pid and detaches (fork, then the first process exits), so that nothing of the process that
started it, a Ray worker included, is its parent; what it did goes to ``restore/watchdog.log`` in the state
directory.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from perfkit.kinds.ollama import restore
from perfkit.kinds.ollama.control import restore_pending


def main(argv: list[str]) -> int:
    path = Path(argv[0])
    pid = os.fork()
    if pid > 0:
        print(pid, flush=True)
        os._exit(0)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    said = restore.watch(path, restore_pending)
    try:
        with open(restore.state_dir() / "restore" / "watchdog.log", "a") as f:
            f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} pid {os.getpid()} {path.name}: {said}\n")
    except OSError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
