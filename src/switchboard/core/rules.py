"""Who may do what in a meeting, and to whom: ONE table, in ONE place.

Everything that decides whether a frame is switched lives here: :data:`RULES`
says which *action* (a frame kind, refined by its operation or media type) a
role may take towards which *audience*, and whether webinar mode takes that
right away. The moderation effects that decide who gets in (lock, lobby) are
the constants below the table. The relay consults this module for every
inbound frame; the docs print the table (``python -m switchboard.core.rules``);
the tests walk every role x action x audience cell. Anything not in the table is
refused, so a new kind or operation is a change here first.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import Forbidden
from .wire import ClientFrame, Kind, Media

__all__ = [
    "JOIN_WHEN_LOCKED",
    "RULES",
    "SKIP_LOBBY",
    "Action",
    "Audience",
    "Role",
    "Rule",
    "action_of",
    "action_of_media",
    "check",
    "markdown_table",
]


class Role(enum.StrEnum):
    """A participant's role: from its invitation, changed only by a host."""

    HOST = "host"
    PRESENTER = "presenter"
    ATTENDEE = "attendee"
    SUPPORT = "support"
    """The operator's support staff, invited by a host: receives only, shows as support."""


class Audience(enum.StrEnum):
    """Who a frame is addressed to."""

    EVERYONE = "everyone"
    """No ``to`` field: every other admitted participant of the meeting."""
    ONE = "one"
    """``to`` names one other participant (private chat, a sync answer)."""
    OWNER = "owner"
    """The owner of the poll named in the frame, and no one else."""
    RELAY = "relay"
    """The relay itself: a control request that changes meeting state."""


class Action(enum.StrEnum):
    """What a frame does: its kind, refined by operation or media type."""

    CHAT = "chat"
    POLL_OPEN = "poll.open"
    POLL_ANSWER = "poll.answer"
    POLL_RESULTS = "poll.results"
    POLL_CLOSE = "poll.close"
    DOCUMENT = "document"
    AUDIO = "audio"
    VIDEO = "video"
    SCREEN = "screen"
    MODERATE = "moderate"
    """lobby, admit, deny, lock, eject, mute, role, webinar, end."""
    RECEIVE = "receive"
    """subscribe, receive, keyframe: a participant shaping what it gets."""


@dataclass(frozen=True, slots=True)
class Rule:
    """One cell: the audiences allowed, and whether webinar mode still allows it."""

    audiences: frozenset[Audience]
    in_webinar: bool = True


_E, _1, _O, _R = Audience.EVERYONE, Audience.ONE, Audience.OWNER, Audience.RELAY
_TO_ALL = Rule(frozenset({_E, _1}))
_TO_OWNER = Rule(frozenset({_O}))
_BROADCAST = Rule(frozenset({_E}))
_NOT_IN_WEBINAR = Rule(frozenset({_E}), in_webinar=False)
_RELAY = Rule(frozenset({_R}))

_PRESENTING: dict[Action, Rule] = {
    Action.CHAT: _TO_ALL,
    Action.POLL_OPEN: _TO_ALL,
    Action.POLL_ANSWER: _TO_OWNER,
    Action.POLL_RESULTS: _TO_ALL,
    Action.POLL_CLOSE: _TO_ALL,
    Action.DOCUMENT: _TO_ALL,
    Action.AUDIO: _BROADCAST,
    Action.VIDEO: _BROADCAST,
    Action.SCREEN: _BROADCAST,
    Action.RECEIVE: _RELAY,
}

RULES: Mapping[tuple[Role, Action], Rule] = {
    **{(Role.HOST, a): r for a, r in _PRESENTING.items()},
    (Role.HOST, Action.MODERATE): _RELAY,
    **{(Role.PRESENTER, a): r for a, r in _PRESENTING.items()},
    (Role.ATTENDEE, Action.CHAT): _TO_ALL,
    (Role.ATTENDEE, Action.POLL_ANSWER): _TO_OWNER,
    (Role.ATTENDEE, Action.AUDIO): _NOT_IN_WEBINAR,
    (Role.ATTENDEE, Action.VIDEO): _NOT_IN_WEBINAR,
    (Role.ATTENDEE, Action.SCREEN): _NOT_IN_WEBINAR,
    (Role.ATTENDEE, Action.RECEIVE): _RELAY,
    (Role.SUPPORT, Action.RECEIVE): _RELAY,
}
"""(role, action) -> the audiences allowed and whether webinar mode keeps the right.

A host may do everything a presenter may, and moderate. Polls and documents
go *to one* only for sync answers and private results. Poll answers go to the
poll's owner only. Attendees publish media except in webinar mode, and never
documents. Support staff only receive, until a host gives them another role.
"""

SKIP_LOBBY: frozenset[Role] = frozenset({Role.HOST})
"""Roles admitted at once while the lobby is on; everyone else waits for a host."""

JOIN_WHEN_LOCKED: frozenset[Role] = frozenset({Role.HOST})
"""Roles that may still join a locked meeting, so it never loses its last host."""

_POLL_ACTIONS = {
    "open": Action.POLL_OPEN,
    "answer": Action.POLL_ANSWER,
    "results": Action.POLL_RESULTS,
    "close": Action.POLL_CLOSE,
}
_MEDIA_ACTIONS = {Media.AUDIO: Action.AUDIO, Media.VIDEO: Action.VIDEO, Media.SCREEN: Action.SCREEN}
_RECEIVE_OPS = frozenset({"subscribe", "receive", "keyframe"})


def action_of_media(m: int) -> Action:
    """The action of sending media of type ``m`` (a :class:`Media` value)."""
    return _MEDIA_ACTIONS[Media(m)]


def action_of(frame: ClientFrame) -> Action:
    """The action a frame takes (publishing a track counts as its media action)."""
    kind = frame.kind
    if kind is Kind.CHAT:
        return Action.CHAT
    if kind is Kind.MEDIA:
        return _MEDIA_ACTIONS[frame.fields["m"]]  # IntEnum keys: an int finds its member
    if kind is Kind.POLL:
        return _POLL_ACTIONS[frame.op or ""]
    if kind is Kind.DOCUMENT:
        return Action.DOCUMENT
    if frame.op == "publish":
        return _MEDIA_ACTIONS[Media(frame.fields["m"])]
    if frame.op in _RECEIVE_OPS:
        return Action.RECEIVE
    return Action.MODERATE


_PHRASES = {
    Action.CHAT: "send chat",
    Action.POLL_OPEN: "open polls",
    Action.POLL_ANSWER: "answer polls",
    Action.POLL_RESULTS: "publish poll results",
    Action.POLL_CLOSE: "close polls",
    Action.DOCUMENT: "share documents",
    Action.AUDIO: "send audio",
    Action.VIDEO: "send video",
    Action.SCREEN: "share a screen",
    Action.MODERATE: "moderate the meeting",
    Action.RECEIVE: "choose what to receive",
}


def check(role: Role, action: Action, audience: Audience, *, webinar: bool = False) -> None:
    """Raise :class:`Forbidden` unless ``role`` may take ``action`` towards ``audience``."""
    rule = RULES.get((role, action))
    if rule is None or audience not in rule.audiences:
        article = "an" if role.value[0] in "aeiou" else "a"
        target = "" if audience is Audience.RELAY else f" to {audience.value}"
        reason = f"{article} {role.value} may not {_PHRASES[action]}{target}"
        raise Forbidden(reason, code="not_allowed")
    if webinar and not rule.in_webinar:
        raise Forbidden(
            f"in webinar mode attendees may not {_PHRASES[action]}",
            code="webinar",
        )


def markdown_table() -> str:
    """Render the table for ``docs/protocol.md`` so the docs cannot drift from the code."""
    actions = list(Action)
    lines = ["| role | " + " | ".join(a.value for a in actions) + " |"]
    lines.append("|---" * (len(actions) + 1) + "|")
    for role in Role:
        cells = []
        for action in actions:
            rule = RULES.get((role, action))
            if rule is None:
                cells.append("-")
                continue
            cell = ", ".join(a.value for a in Audience if a in rule.audiences)
            cells.append(cell if rule.in_webinar else f"{cell} (not in webinar)")
        lines.append(f"| {role.value} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - documentation helper
    print(markdown_table())
