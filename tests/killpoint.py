"""Run a stage with a kill point: ``python -m tests.killpoint -m pipeline.score --date ...``
(or ``-c CODE args``).

An audit hook (:func:`sys.addaudithook`) counts the moments where the process changes the
file system under its working directory: a data file opened (to write or to read; not code), a rename,
a delete, a directory made or removed. With
``KILL_AT=n`` in the environment the process sends itself SIGKILL at the ``n``-th such moment:
no exception, no ``finally``, no flush, as a power cut or the OOM killer would stop it. With
``KILL_COUNT_FILE=path`` it writes how many moments it passed at exit (the schedule's range).
Writes by native code that does not go through Python's ``open`` (Arrow, polars, torch's
zip writer) are not seen, but the temporary files they write into and the renames that
publish them are.
"""

from __future__ import annotations

import atexit
import os
import runpy
import signal
import sys

_CHANGES = {"os.rename", "os.remove", "os.rmdir", "os.mkdir", "shutil.rmtree", "os.truncate"}
_CODE = (".py", ".pyc", ".so", ".pth")


def install(kill_at: int | None, count_file: str | None) -> None:
    root = os.getcwd() + os.sep
    state = {"n": 0, "off": False}

    def under_root(path: object) -> str | None:
        if isinstance(path, int) or path is None:
            return None
        try:
            text = os.fsdecode(path)
        except TypeError:
            return None
        full = os.path.abspath(os.path.join(root, text))
        return full if full.startswith(root) else None

    def hook(event: str, args: tuple) -> None:
        if state["off"]:
            return
        if event == "open":
            full = under_root(args[0] if args else None)
            name = os.path.basename(full or "")
            if full is None or name.endswith(_CODE) or name.startswith(".killpoints"):
                return
        elif event in _CHANGES:
            if not args or under_root(args[0]) is None:
                return
        else:
            return
        state["n"] += 1
        if kill_at is not None and state["n"] >= kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    sys.addaudithook(hook)
    if count_file:

        def report() -> None:
            state["off"] = True
            with open(count_file, "w") as fh:
                fh.write(str(state["n"]))

        atexit.register(report)


def main() -> None:
    kill_at = os.environ.get("KILL_AT")
    install(int(kill_at) if kill_at else None, os.environ.get("KILL_COUNT_FILE"))
    args = sys.argv[1:]
    if args[:1] == ["-m"]:
        sys.argv = [args[1], *args[2:]]
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
    elif args[:1] == ["-c"]:
        sys.argv = ["-c", *args[2:]]
        exec(compile(args[1], "<killpoint -c>", "exec"), {"__name__": "__main__"})
    else:
        raise SystemExit("usage: python -m tests.killpoint (-m MODULE | -c CODE) [ARGS...]")


if __name__ == "__main__":
    main()
