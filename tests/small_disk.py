"""A real full disk for tests: a small tmpfs mounted in a private mount namespace (`unshare -rm`),
so no privilege is needed beyond what unprivileged user namespaces give, and nothing outlives the test."""

from __future__ import annotations

import shutil
import subprocess
from functools import cache


@cache
def available() -> bool:
    """Whether this machine lets a test mount a small disk of its own."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size=1m tmpfs "$(mktemp -d)"'],
                           capture_output=True)
    return probe.returncode == 0


def run_script(lines: list[str], env: dict[str, str], timeout: float = 900) -> None:
    """`lines` as one bash script in a private mount namespace; the mounts vanish with it, so
    whatever a test wants to inspect afterwards must be copied out by the script itself."""
    subprocess.run(["unshare", "-rm", "bash", "-c", "\n".join(lines)], env=env, timeout=timeout, check=True)
