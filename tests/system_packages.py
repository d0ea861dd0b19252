"""apt-get for the tests that install system packages (Slurm and munge, Chromium): one call at a
time on this machine. `make test` runs two pytest-xdist workers that may both need a package, and
apt-get fails at once, instead of waiting, when another apt-get holds its lock."""

import fcntl
import os
import subprocess

LOCK = "/tmp/vitc-tests-apt-get.lock"


def apt_get(*args: str, **run_kw) -> subprocess.CompletedProcess:
    """`apt-get ARGS` (non-interactive) once no other test's apt-get runs."""
    with open(LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return subprocess.run(["apt-get", *args], env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, **run_kw)
