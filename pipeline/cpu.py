"""CPU threads for a stage's torch work, sized so that jobs sharing a machine do not collapse.

torch starts one OpenMP thread per core of the machine, whatever else runs there. Two
CPU-heavy stages at once then run twice as many threads as there are cores, and OpenMP
threads that wait for each other at every step keep missing their partners' time slices: two
LLM stages on a 2-core machine went from about 13 s to about 170 s a batch. Here each job
takes an equal share of the cores it may run on (its affinity mask: a container's or
``taskset``'s CPUs, not the whole machine's) among this project's CPU-heavy jobs running on the
machine now, and looks again between batches as jobs come and go (:meth:`Job.rebalance`).
``COLDSTART_THREADS=N`` in the environment fixes the number instead; ``OMP_NUM_THREADS=N``
caps the share.

A job is counted while it holds an exclusive ``flock`` on its own file in a per-user
directory of the system's temporary directory; the lock goes with the process, so a killed job
stops counting at once (its file is removed by the next job that looks).
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

ENV = "COLDSTART_THREADS"
JOBS = Path(tempfile.gettempdir()) / f"coldstart-cdr-jobs-{os.getuid()}"


def cores() -> int:
    """CPUs this process may run on (its affinity mask), else the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def running_jobs(directory: Path = JOBS) -> int:
    """CPU-heavy jobs of this project running now on this machine (this one included)."""
    n = 0
    for path in directory.glob("*.job"):
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            n += 1  # held: a running job
        else:
            path.unlink(missing_ok=True)  # a job that has ended (killed: its lock went with it)
        finally:
            os.close(fd)
    return n


class Job:
    """A CPU-heavy job: counted by the others while it runs, its torch threads its share."""

    def __init__(self, name: str, directory: Path = JOBS):
        self.name = name
        self.directory = directory
        self.threads = 0
        self._before = 0  # torch's threads before the job: restored after it
        self._fd: int | None = None
        self._path: Path | None = None

    def __enter__(self) -> Job:
        self.directory.mkdir(parents=True, exist_ok=True)
        # Locked before it gets its name, so that no other job sees it unlocked and removes it.
        fd, tmp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=self.directory)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._path = self.directory / f"{os.getpid()}-{self.name}.job"
        os.replace(tmp, self._path)
        self._fd = fd
        import torch

        self._before = torch.get_num_threads()
        self.rebalance()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._path is not None:
            self._path.unlink(missing_ok=True)
        if self._fd is not None:
            os.close(self._fd)
        self._fd = self._path = None
        if self._before:
            import torch

            torch.set_num_threads(self._before)

    def share(self) -> int:
        """This job's threads: ``COLDSTART_THREADS``, else the cores over the running jobs (at
        most ``OMP_NUM_THREADS`` where that is set)."""
        fixed = os.environ.get(ENV, "").strip()
        if fixed:
            return max(1, int(fixed))
        share = max(1, cores() // max(1, running_jobs(self.directory)))
        cap = os.environ.get("OMP_NUM_THREADS", "").strip()
        return min(share, int(cap)) if cap.isdigit() and int(cap) > 0 else share

    def rebalance(self) -> int:
        """Set torch's threads to this job's share now (call it between batches)."""
        import torch

        n = self.share()
        if n != self.threads:
            torch.set_num_threads(n)
            if self.threads:
                log.info("%s: %d torch threads (jobs on this machine changed)", self.name, n)
            self.threads = n
        return n
