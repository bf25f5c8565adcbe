"""Dropping root: ``--user NAME [--group NAME]`` (TOML ``user``, ``group``).

The daemon binds its listener as root (a port below 1024, a socket in a root-owned directory), then calls
:func:`drop_privileges` before it opens the store or answers anything: supplementary groups cleared, then the
group, then the user (the order that leaves no way back). It then checks that no real, effective or saved id
is still root's and that ``setuid(0)`` fails; if anything is left, it stops (:class:`~mtasts.errors.MTASTSError`,
exit 1) rather than run as root. ``--user`` naming the user the daemon already runs as is a no-op; naming
another one without being root is an error.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
from typing import NamedTuple

from ..errors import MTASTSError, UsageError

__all__ = ["Identity", "drop_privileges", "resolve_identity"]

log = logging.getLogger("mtasts.socketmap")


class Identity(NamedTuple):
    """The user and group to run as, looked up: names (for messages) and ids."""

    user: str
    uid: int
    group: str
    gid: int


def resolve_identity(user: str, group: str | None = None) -> Identity:
    """``user`` (a name or a number) and ``group`` (default: the user's primary group) as ids; UsageError for
    an unknown one, or for root (``--user`` is for running unprivileged)."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        if not user.isdigit():
            raise UsageError(f"--user {user}: no such user") from None
        uid, default_gid = int(user), None
        try:
            entry = pwd.getpwuid(uid)
        except KeyError:
            pass
        else:
            default_gid = entry.pw_gid
    else:
        uid, default_gid = entry.pw_uid, entry.pw_gid
    if uid == 0:
        raise UsageError(f"--user {user}: name an unprivileged user, not root")
    if group is None:
        if default_gid is None:
            raise UsageError(f"--user {user}: a numeric user without a passwd entry needs --group")
        gid = default_gid
        try:
            group = grp.getgrgid(gid).gr_name
        except KeyError:
            group = str(gid)
    else:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            if not group.isdigit():
                raise UsageError(f"--group {group}: no such group") from None
            gid = int(group)
    return Identity(user, uid, group, gid)


def drop_privileges(identity: Identity) -> bool:
    """Run as ``identity`` from now on: True when switched, False when already running as it (a no-op).

    MTASTSError when not root (and not already that user), when a step fails, or when root is still reachable.
    """
    if os.getresuid() == (identity.uid,) * 3 and os.getresgid() == (identity.gid,) * 3:
        return False
    if os.geteuid() != 0:
        raise MTASTSError(
            f"--user {identity.user}: switching users needs root (running as uid {os.geteuid()}); "
            "start as root, or leave --user out"
        )
    try:
        os.setgroups([])
        os.setgid(identity.gid)
        os.setuid(identity.uid)
    except OSError as exc:
        raise MTASTSError(f"cannot switch to user {identity.user}, group {identity.group}: {exc.strerror}") from None
    _check_dropped(identity)
    log.info("running as user %s (uid %d), group %s (gid %d)", identity.user, identity.uid, identity.group,
             identity.gid)  # fmt: skip
    return True


def _check_dropped(identity: Identity) -> None:
    """Refuse to go on with any id of root's left, or with a way back to uid 0."""
    uids, gids = os.getresuid(), os.getresgid()
    if uids != (identity.uid,) * 3 or gids != (identity.gid,) * 3 or 0 in uids:
        raise MTASTSError(f"switching to user {identity.user} left uids {uids}, gids {gids}: not running as root")
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise MTASTSError(f"switching to user {identity.user} failed: setuid(0) still succeeds; not running as root")
