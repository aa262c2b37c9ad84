"""Who may send which kind of frame to whom: ONE table, in ONE place.

Everything that decides whether a frame is switched lives in :data:`RULES`.
The relay consults it for every inbound frame; the docs print it
(``python -m switchboard.core.rules`` writes the Markdown table); the tests walk
every role x kind x audience cell. A kind or role that is not in the table is
refused, so adding a kind is a change here first.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from ..errors import Forbidden
from .wire import Kind

__all__ = ["RULES", "Audience", "Role", "check", "markdown_table"]


class Role(enum.StrEnum):
    """A participant's role, fixed by the invitation it joined with."""

    HOST = "host"
    PRESENTER = "presenter"
    ATTENDEE = "attendee"


class Audience(enum.StrEnum):
    """Who a frame is addressed to, from its header."""

    EVERYONE = "everyone"
    """No ``to`` field: every other participant of the meeting."""
    ONE = "one"
    """``to`` names one other participant."""


_ANY = frozenset(Audience)

RULES: Mapping[tuple[Role, Kind], frozenset[Audience]] = {
    (Role.HOST, Kind.CHAT): _ANY,
    (Role.PRESENTER, Kind.CHAT): _ANY,
    (Role.ATTENDEE, Kind.CHAT): _ANY,
}
"""(role, kind) -> the audiences that role may address with that kind.

Control frames are not in the table: clients send exactly one (the join), and
the relay generates the rest.
"""


def check(role: Role, kind: Kind, audience: Audience) -> None:
    """Raise :class:`Forbidden` unless ``role`` may send ``kind`` to ``audience``."""
    allowed = RULES.get((role, kind))
    if allowed is None or audience not in allowed:
        article = "an" if role.value[0] in "aeiou" else "a"
        raise Forbidden(
            f"{article} {role.value} may not send {kind.name.lower()} frames to {audience.value}",
            code="not_allowed",
        )


def markdown_table() -> str:
    """Render the table for ``docs/protocol.md`` so the docs cannot drift from the code."""
    kinds = [k for k in Kind if k is not Kind.CONTROL]
    lines = ["| role | " + " | ".join(k.name.lower() for k in kinds) + " |"]
    lines.append("|---" * (len(kinds) + 1) + "|")
    for role in Role:
        cells = []
        for kind in kinds:
            allowed = RULES.get((role, kind), frozenset())
            cells.append(", ".join(a.value for a in Audience if a in allowed) or "-")
        lines.append(f"| {role.value} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - documentation helper
    print(markdown_table())
