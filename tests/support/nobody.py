"""Running something as the unprivileged user ``nobody``, for real.

The interpreter lives under /root (0700 here), so a command that starts
Python runs in a private mount namespace (``unshare -m``) where /root is a
tmpfs holding only a bind mount of ~/.pyenv, then ``runuser -u nobody``.
With ``private_tmp`` the namespace also gets its own /tmp, /var/tmp and
/dev/shm (the work folder, the project and its venv bound back at their
own paths when they lie there, as in a CI's clone under /tmp), and whatever the
command left there is listed in ``WORK/strays`` once it has ended: the test
can say that nothing was written outside the folders it gave the command.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

NOBODY_UID = 65534

# Run as root inside the new mount namespace, then drop to nobody.
NAMESPACE = textwrap.dedent("""
    set -e
    work="$1"; private_tmp="$2"; keep="$3"; shift 3
    real="$work/realroot"
    mount --make-rprivate /
    mount --bind /root "$real"
    mount -t tmpfs -o mode=0755 tmpfs /root
    if [ -d "$real/.pyenv" ]; then
        mkdir -p /root/.pyenv
        mount --bind "$real/.pyenv" /root/.pyenv
    fi
    prune=""
    if [ "$private_tmp" = 1 ]; then
        mkdir -p /root/work
        mount --bind "$work" /root/work
        mkdir -m 700 /root/old  # the real temporary folders, out of nobody's reach
        for d in /tmp /var/tmp /dev/shm; do
            mkdir -p "/root/old$d"
            mount --bind "$d" "/root/old$d"
            mount -t tmpfs -o mode=1777 tmpfs "$d"
        done
        mkdir -p "$work"
        mount --bind /root/work "$work"
        # The project and its interpreter stay where they are when they live
        # in a temporary folder (a CI's clone under /tmp), and are no strays.
        for k in $keep; do
            case "$k" in
                /tmp/*|/var/tmp/*|/dev/shm/*)
                    mkdir -p "$k"; mount --bind "/root/old$k" "$k"
                    prune="$prune $k" ;;
            esac
        done
    fi
    cd /tmp
    set +e
    runuser -p -u nobody -- "$@"
    rc=$?
    if [ "$private_tmp" = 1 ]; then
        find /tmp /var/tmp /dev/shm -mindepth 1 -path "$work" -prune -o -print \
            | while read -r f; do
                stray=1
                for k in $prune; do
                    case "$k/" in "$f"/*) stray=0 ;; esac  # k itself or a folder above it
                    case "$f" in "$k"/*) stray=0 ;; esac   # inside k
                done
                [ $stray = 0 ] || echo "$f"
            done > "$work/strays"
    fi
    exit $rc
""")


def setpriv_prefix() -> list[str]:
    """A prefix that runs a command as nobody (no namespace: for commands
    that do not start another interpreter); skips where that is impossible."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run a command as another user")
    if shutil.which("setpriv"):
        return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    if shutil.which("runuser"):
        return ["runuser", "-u", "nobody", "--"]
    pytest.skip("neither setpriv nor runuser is installed")


def _keep() -> list[str]:
    """Folders the command needs that may lie in a temporary folder: the
    project (a CI clones it anywhere, /tmp included) and the interpreter's
    environment (its venv).  Paths with spaces cannot be kept."""
    project = Path(__file__).resolve().parents[2]
    paths = {str(project), str(Path(sys.prefix).resolve()), str(Path(sys.prefix).absolute())}
    return sorted(p for p in paths if " " not in p)


@contextmanager
def nobody_namespace(*, private_tmp: bool = False) -> Iterator[tuple[list[str], Path]]:
    """(command prefix, a work folder nobody may write under /tmp).

    The work folder and everything in it is removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root to become nobody")
    for tool in ("unshare", "runuser"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    work = Path(tempfile.mkdtemp(prefix="pipetune-nobody-"))
    work.chmod(0o777)
    (work / "realroot").mkdir()  # where /root is seen from inside (still 0700)
    try:
        yield (["unshare", "-m", "sh", "-c", NAMESPACE, "sh", str(work),
                "1" if private_tmp else "0", " ".join(_keep())], work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
