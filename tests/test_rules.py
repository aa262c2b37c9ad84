"""The one rules table (switchboard.core.rules), walked cell by cell."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from switchboard.core import rules, wire
from switchboard.core.rules import (
    JOIN_WHEN_LOCKED,
    RULES,
    SKIP_LOBBY,
    Action,
    Audience,
    Role,
    Rule,
    action_of,
)
from switchboard.core.wire import CONTROL_OPS, DOCUMENT_OPS, POLL_OPS, ClientFrame, Kind, Media
from switchboard.errors import Forbidden

CELLS = list(itertools.product(Role, Action, Audience))

MEDIA_ACTIONS = (Action.AUDIO, Action.VIDEO, Action.SCREEN)
MODERATION_OPS = ("lobby", "admit", "deny", "lock", "eject", "mute", "role", "webinar", "end")
RECEIVE_OPS = ("subscribe", "receive", "keyframe")


def allowed(role: Role, action: Action, audience: Audience, *, webinar: bool = False) -> bool:
    """What RULES says, read independently of check()."""
    rule = RULES.get((role, action))
    if rule is None or audience not in rule.audiences:
        return False
    return rule.in_webinar or not webinar


def refusal(role: Role, action: Action, audience: Audience, *, webinar: bool = False) -> Forbidden:
    with pytest.raises(Forbidden) as info:
        rules.check(role, action, audience, webinar=webinar)
    return info.value


def test_the_walk_covers_every_cell() -> None:
    assert len(CELLS) == len(Role) * len(Action) * len(Audience)
    assert len(CELLS) == len(set(CELLS))
    # The enums are what the table and the docs are made of.
    assert set(Audience) == {
        Audience.EVERYONE,
        Audience.ONE,
        Audience.OWNER,
        Audience.RELAY,
    }


@pytest.mark.parametrize(("role", "action", "audience"), CELLS, ids=str)
def test_check_refuses_exactly_where_rules_says_no(
    role: Role, action: Action, audience: Audience
) -> None:
    if allowed(role, action, audience):
        assert rules.check(role, action, audience) is None
        assert rules.check(role, action, audience, webinar=False) is None
    else:
        error = refusal(role, action, audience)
        assert error.code == "not_allowed"
        assert error.http_status == 403
        # The reason names who was refused and to whom, so the client can tell.
        assert role.value in error.reason
        if audience is not Audience.RELAY:
            assert audience.value in error.reason


@pytest.mark.parametrize(("role", "action", "audience"), CELLS, ids=str)
def test_webinar_refuses_exactly_the_cells_not_kept_in_webinar(
    role: Role, action: Action, audience: Audience
) -> None:
    rule = RULES.get((role, action))
    if rule is None or audience not in rule.audiences:
        # Not allowed at all: webinar mode does not change the answer.
        assert refusal(role, action, audience, webinar=True).code == "not_allowed"
    elif rule.in_webinar:
        assert rules.check(role, action, audience, webinar=True) is None
    else:
        error = refusal(role, action, audience, webinar=True)
        assert error.code == "webinar"
        assert error.http_status == 403
        # Outside webinar mode the same cell is allowed.
        assert rules.check(role, action, audience, webinar=False) is None


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("audience", [Audience.EVERYONE, Audience.ONE, Audience.OWNER])
def test_refusal_reasons_name_the_action(role: Role, audience: Audience) -> None:
    refused = [a for a in Action if not allowed(role, a, audience)]
    reasons = {refusal(role, a, audience).reason for a in refused}
    # One distinct reason per refused action: the reason says what was refused.
    assert len(reasons) == len(refused)


# --- the intended policy, stated explicitly ------------------------------------


PARTICIPATING = [r for r in Role if r is not Role.SUPPORT]
"""Every role but support, which only receives."""


@pytest.mark.parametrize("role", PARTICIPATING)
@pytest.mark.parametrize("webinar", [False, True])
def test_everyone_may_chat_to_everyone_and_to_one(role: Role, webinar: bool) -> None:
    for audience in (Audience.EVERYONE, Audience.ONE):
        assert allowed(role, Action.CHAT, audience, webinar=webinar)
        rules.check(role, Action.CHAT, audience, webinar=webinar)
    for audience in (Audience.OWNER, Audience.RELAY):
        assert refusal(role, Action.CHAT, audience).code == "not_allowed"


@pytest.mark.parametrize("audience", list(Audience))
@pytest.mark.parametrize("webinar", [False, True])
def test_attendees_never_share_documents_or_run_polls(audience: Audience, webinar: bool) -> None:
    for action in (Action.DOCUMENT, Action.POLL_OPEN, Action.POLL_RESULTS, Action.POLL_CLOSE):
        assert (Role.ATTENDEE, action) not in RULES
        assert refusal(Role.ATTENDEE, action, audience, webinar=webinar).code == "not_allowed"


@pytest.mark.parametrize("role", [Role.HOST, Role.PRESENTER])
def test_hosts_and_presenters_share_documents_and_run_polls(role: Role) -> None:
    for action in (Action.DOCUMENT, Action.POLL_OPEN, Action.POLL_RESULTS, Action.POLL_CLOSE):
        # To everyone, and to one (a late joiner's sync).
        for audience in (Audience.EVERYONE, Audience.ONE):
            rules.check(role, action, audience, webinar=True)


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("audience", list(Audience))
def test_only_hosts_moderate(role: Role, audience: Audience) -> None:
    if role is Role.HOST and audience is Audience.RELAY:
        rules.check(role, Action.MODERATE, audience)
        rules.check(role, Action.MODERATE, audience, webinar=True)
    else:
        assert refusal(role, Action.MODERATE, audience).code == "not_allowed"


@pytest.mark.parametrize("role", PARTICIPATING)
def test_poll_answers_go_to_the_owner_only(role: Role) -> None:
    assert RULES[(role, Action.POLL_ANSWER)].audiences == {Audience.OWNER}
    rules.check(role, Action.POLL_ANSWER, Audience.OWNER, webinar=True)
    for audience in (Audience.EVERYONE, Audience.ONE, Audience.RELAY):
        assert refusal(role, Action.POLL_ANSWER, audience).code == "not_allowed"


@pytest.mark.parametrize("role", list(Role))
def test_everyone_chooses_what_to_receive_even_in_webinar(role: Role) -> None:
    assert RULES[(role, Action.RECEIVE)] == Rule(frozenset({Audience.RELAY}))
    rules.check(role, Action.RECEIVE, Audience.RELAY, webinar=True)


@pytest.mark.parametrize("role", PARTICIPATING)
@pytest.mark.parametrize("action", MEDIA_ACTIONS)
def test_media_is_only_ever_broadcast(role: Role, action: Action) -> None:
    rules.check(role, action, Audience.EVERYONE)
    for audience in (Audience.ONE, Audience.OWNER, Audience.RELAY):
        assert refusal(role, action, audience).code == "not_allowed"


@pytest.mark.parametrize("action", MEDIA_ACTIONS)
def test_webinar_takes_media_from_attendees_only(action: Action) -> None:
    assert refusal(Role.ATTENDEE, action, Audience.EVERYONE, webinar=True).code == "webinar"
    rules.check(Role.ATTENDEE, action, Audience.EVERYONE, webinar=False)
    for role in (Role.HOST, Role.PRESENTER):
        rules.check(role, action, Audience.EVERYONE, webinar=True)


def test_webinar_refuses_nothing_but_attendee_media() -> None:
    not_in_webinar = {cell for cell, rule in RULES.items() if not rule.in_webinar}
    assert not_in_webinar == {(Role.ATTENDEE, a) for a in MEDIA_ACTIONS}


def test_control_actions_go_to_the_relay_and_data_never_does() -> None:
    for (_, action), rule in RULES.items():
        if action in (Action.MODERATE, Action.RECEIVE):
            assert rule.audiences == {Audience.RELAY}
        else:
            assert Audience.RELAY not in rule.audiences


def test_roles_are_nested_host_over_presenter_over_attendee() -> None:
    def rights(role: Role) -> set[tuple[Action, Audience]]:
        return {(a, aud) for a in Action for aud in Audience if allowed(role, a, aud)}

    assert rights(Role.ATTENDEE) < rights(Role.PRESENTER) < rights(Role.HOST)
    assert rights(Role.HOST) - rights(Role.PRESENTER) == {(Action.MODERATE, Audience.RELAY)}


def test_hosts_skip_the_lobby_and_may_join_when_locked() -> None:
    assert frozenset({Role.HOST}) == SKIP_LOBBY
    assert frozenset({Role.HOST}) == JOIN_WHEN_LOCKED
    assert Role.PRESENTER not in SKIP_LOBBY
    assert Role.ATTENDEE not in JOIN_WHEN_LOCKED


# --- the table itself ----------------------------------------------------------


def test_table_keys_and_values_are_made_of_the_enums() -> None:
    for (role, action), rule in RULES.items():
        assert type(role) is Role
        assert type(action) is Action
        assert type(rule) is Rule
        assert isinstance(rule.audiences, frozenset)
        assert rule.audiences <= set(Audience)
        assert rule.audiences, f"an empty cell for {role}/{action} should be absent instead"


def test_every_role_has_a_sendable_action() -> None:
    # A role that can send nothing at all is a table mistake.
    for role in Role:
        assert any(allowed(role, a, aud) for a in Action for aud in Audience)


def test_every_action_is_allowed_to_someone() -> None:
    # An action nobody may take is dead weight in the table.
    for action in Action:
        assert any(allowed(role, action, aud) for role in Role for aud in Audience), action


def test_rule_defaults_to_allowed_in_webinar() -> None:
    assert Rule(frozenset({Audience.EVERYONE})).in_webinar is True


# --- action_of ---------------------------------------------------------------------


def parsed(kind: Kind, **fields: Any) -> ClientFrame:
    """A frame as the relay sees it: encoded by a client, then parsed."""
    return wire.parse_client_frame(wire.encode_data(kind, None, b"payload", **fields))


def control(op: str, **fields: Any) -> ClientFrame:
    return wire.parse_client_frame(wire.encode_control(op, **fields))


def test_action_of_chat() -> None:
    assert action_of(parsed(Kind.CHAT)) is Action.CHAT
    assert action_of(ClientFrame(Kind.CHAT, 3, 1)) is Action.CHAT


@pytest.mark.parametrize(
    ("op", "action"),
    [
        ("open", Action.POLL_OPEN),
        ("answer", Action.POLL_ANSWER),
        ("results", Action.POLL_RESULTS),
        ("close", Action.POLL_CLOSE),
    ],
)
def test_action_of_poll(op: str, action: Action) -> None:
    assert action_of(parsed(Kind.POLL, op=op, poll=1)) is action


def test_action_of_covers_every_poll_op() -> None:
    assert {action_of(parsed(Kind.POLL, op=op, poll=1)) for op in POLL_OPS} == {
        Action.POLL_OPEN,
        Action.POLL_ANSWER,
        Action.POLL_RESULTS,
        Action.POLL_CLOSE,
    }


@pytest.mark.parametrize("op", sorted(DOCUMENT_OPS))
def test_action_of_document(op: str) -> None:
    frame = parsed(Kind.DOCUMENT, op=op, doc=1, seq=0, page=0)
    assert frame.op == op
    assert action_of(frame) is Action.DOCUMENT


@pytest.mark.parametrize(
    ("media", "action"),
    [(Media.AUDIO, Action.AUDIO), (Media.VIDEO, Action.VIDEO), (Media.SCREEN, Action.SCREEN)],
)
def test_action_of_media_frames_and_publish(media: Media, action: Action) -> None:
    assert action_of(parsed(Kind.MEDIA, track=1, m=int(media), seq=0)) is action
    # Publishing a track is the right to send it.
    assert action_of(control("publish", track=1, m=int(media))) is action
    assert action_of(control("publish", track=1, m=int(media), on=False)) is action


@pytest.mark.parametrize("op", MODERATION_OPS)
def test_action_of_moderation_ops(op: str) -> None:
    frame = control(op, pid=1, track=1, role="presenter")
    assert frame.op == op
    assert action_of(frame) is Action.MODERATE


@pytest.mark.parametrize("op", RECEIVE_OPS)
def test_action_of_receive_ops(op: str) -> None:
    frame = control(op, pid=1, track=1, m=int(Media.VIDEO))
    assert action_of(frame) is Action.RECEIVE


def test_action_of_covers_every_control_op() -> None:
    assert {*MODERATION_OPS, *RECEIVE_OPS, "publish"} == CONTROL_OPS


# --- the docs table ----------------------------------------------------------------


def split_row(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def test_markdown_table_lists_every_role_and_every_action() -> None:
    table = rules.markdown_table()
    lines = table.splitlines()
    assert split_row(lines[0]) == ["role"] + [a.value for a in Action]
    assert set(lines[1].replace("|", "")) == {"-"}
    assert lines[1].count("|") == len(Action) + 2
    body = lines[2:]
    assert len(body) == len(Role)
    for role, line in zip(Role, body, strict=True):
        cells = split_row(line)
        assert cells[0] == role.value
        for action, cell in zip(Action, cells[1:], strict=True):
            rule = RULES.get((role, action))
            if rule is None:
                assert cell == "-"
                continue
            assert cell.endswith("(not in webinar)") is (not rule.in_webinar)
            shown = {a.strip() for a in cell.removesuffix("(not in webinar)").split(",")}
            assert shown == {a.value for a in rule.audiences}


def test_markdown_table_marks_attendee_media_not_in_webinar() -> None:
    lines = rules.markdown_table().splitlines()
    header = split_row(lines[0])
    attendee = next(split_row(line) for line in lines[2:] if split_row(line)[0] == "attendee")
    row = dict(zip(header, attendee, strict=True))
    for action in MEDIA_ACTIONS:
        assert row[action.value] == "everyone (not in webinar)"
    assert row["chat"] == "everyone, one"
    assert row["document"] == "-"
    assert row["moderate"] == "-"
    assert rules.markdown_table().count("(not in webinar)") == len(MEDIA_ACTIONS)


@pytest.mark.parametrize("action", [a for a in Action if a is not Action.RECEIVE])
@pytest.mark.parametrize("audience", list(Audience))
def test_support_only_receives(action: Action, audience: Audience) -> None:
    assert (Role.SUPPORT, action) not in RULES
    assert refusal(Role.SUPPORT, action, audience).code == "not_allowed"
    rules.check(Role.SUPPORT, Action.RECEIVE, Audience.RELAY)
