"""The SDK covers the account API a host needs (edit, password, sessions, delete)."""

from __future__ import annotations

import pytest

from switchboard.client import ApiClient, ApiError
from switchboard.node import Node

from .conftest import Host, signed_in_host


async def test_a_host_manages_its_account_through_the_sdk(node: Node, host: Host) -> None:
    me = await host.api.account()
    assert (me["host_id"], me["email"]) == (host.host_id, host.email)
    changed = await host.api.update_account(name="Ada", preferences={"product_news": False})
    assert (changed["name"], changed["preferences"]) == ("Ada", {"product_news": False})

    async with ApiClient(node.api_url, ca_file=node.ca_file) as laptop:
        await laptop.sign_in(host.email, host.password)
        sessions = await host.api.sessions()
        assert len(sessions) == 2
        assert [s["current"] for s in sessions].count(True) == 1
        assert all("token" not in s for s in sessions)

        await host.api.change_password(host.password, "a brand new passphrase")
        with pytest.raises(ApiError) as ended:
            await laptop.meetings()  # the other session ended
        assert ended.value.status == 401
    await host.api.meetings()  # this one did not

    assert (await host.api.public_key()).startswith("-----BEGIN PUBLIC KEY-----")
    deleted = await host.api.delete_account("a brand new passphrase")
    assert deleted["status"] == "deleted"
    async with ApiClient(node.api_url, ca_file=node.ca_file) as again:
        with pytest.raises(ApiError) as refused:
            await again.sign_in(host.email, "a brand new passphrase")
        assert refused.value.code == "invalid_credentials"


async def test_sign_out_everywhere_ends_this_session_too(node: Node) -> None:
    h = await signed_in_host(node)
    token = h.api.token
    await h.api.sign_out_everywhere()
    h.api.token = token
    with pytest.raises(ApiError) as gone:
        await h.api.meetings()
    assert gone.value.status == 401
    await h.api.close()
