"""This process's name in ledger claims and the lease (`host:pid`), and whether a process named
so on this host is gone — which lets a claim or a lease of a killed worker be taken over without
waiting for it to age out."""

from __future__ import annotations

import os
import socket

HOSTNAME = socket.gethostname()
OWNER = f"{HOSTNAME}:{os.getpid()}"


def owner_is_dead(owner: object) -> bool:
    """True only when a claim's owner was a process on this host that no longer exists.

    Another host, an unparseable owner, or a live pid (even a reused one) all answer False:
    the claim is then left to age out, which is the safe direction.
    """
    if not isinstance(owner, str) or ":" not in owner:
        return False
    host, _, pid_text = owner.rpartition(":")
    if host != HOSTNAME or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # exists, owned by someone else
    return False
