"""Process limits a relay (and its load generator) needs from the operating system.

Every participant is an open socket. Many systems start processes with a soft
limit of 1024 open files, far below what one relay process holds; the hard
limit is the operator's to set (``LimitNOFILE=`` in the systemd unit), the soft
one is ours to lift. One function, so the server and the generator lift it the
same way.
"""

from __future__ import annotations

__all__ = ["raise_open_files_limit"]


def raise_open_files_limit(wanted: int) -> int:
    """Lift the soft open-files limit toward ``wanted`` (never past the hard limit).

    Returns the soft limit now in force, so a caller can say when it is short.
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return wanted
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft
