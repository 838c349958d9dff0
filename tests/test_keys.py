"""JWKS behaviour (SPEC §4 "Keys") against FakeClerk over loopback HTTP."""

from __future__ import annotations

import asyncio
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette

from clerk_tinybird_middleware import Settings
from clerk_tinybird_middleware.core import keys as keys_module
from clerk_tinybird_middleware.core.memo import Verified
from clerk_tinybird_middleware.engine import Engine
from clerk_tinybird_middleware.testing import FakeClerk
from flows import FakeClock, Stepper, loopback, no_answer
from support import bearer, client, state_app


def jwks_app(fake: FakeClerk, **settings: Any) -> Starlette:
    return state_app(**{"secret_key": fake.secret_key, "clerk_api_url": fake.api_url, **settings})


async def test_one_fetch_for_many_requests(fake_clerk: FakeClerk) -> None:
    token = fake_clerk.session_token("user_1")
    async with client(jwks_app(fake_clerk)) as http:
        first = await asyncio.gather(*(http.get("/", headers=bearer(token)) for _ in range(50)))
        rest = [await http.get("/", headers=bearer(token)) for _ in range(50)]
    assert {r.json()["status"] for r in first + rest} == {"signed-in"}
    assert fake_clerk.calls["jwks"] == 1  # 50 concurrent cold misses shared one fetch


async def test_instances_never_share_keys(fake_clerk: FakeClerk) -> None:
    other = FakeClerk()
    with other.serve():
        mine, theirs = fake_clerk.session_token("user_a"), other.session_token("user_b")
        async with client(jwks_app(fake_clerk)) as a, client(jwks_app(other)) as b:
            assert (await a.get("/", headers=bearer(mine))).json()["status"] == "signed-in"
            assert (await b.get("/", headers=bearer(theirs))).json()["status"] == "signed-in"
            assert (await a.get("/", headers=bearer(theirs))).json()["reason"] == "jwk-kid-mismatch"
            assert (await b.get("/", headers=bearer(mine))).json()["reason"] == "jwk-kid-mismatch"
        assert other.calls["jwks"] >= 1
    # Same API URL, wrong secret key: never served the keys another instance loaded.
    async with client(jwks_app(fake_clerk, secret_key="sk_test_wrong")) as wrong:
        response = await wrong.get("/", headers=bearer(mine))
    assert response.json()["reason"] == "secret-key-invalid"


async def test_jwks_failure_is_signed_out_never_500(fake_clerk: FakeClerk) -> None:
    token = fake_clerk.session_token("user_1")
    fake_clerk.inject("jwks", status=503)
    async with client(jwks_app(fake_clerk)) as http:
        soft = await http.get("/", headers=bearer(token))
    async with client(jwks_app(fake_clerk, require_auth=True)) as http:
        hard = await http.get("/", headers=bearer(token))
    assert soft.status_code == 200
    assert soft.json()["reason"] == "jwk-remote-failed-to-load"
    assert hard.status_code == 401
    assert hard.json()["reason"] == "jwk-remote-failed-to-load"
    fake_clerk.clear_faults()
    async with client(jwks_app(fake_clerk)) as http:
        healed = await http.get("/", headers=bearer(token))
    assert healed.json()["status"] == "signed-in"


async def test_empty_jwks_is_a_load_failure(fake_clerk: FakeClerk) -> None:
    fake_clerk.inject("jwks", status=200, body=b'{"keys": []}')
    async with client(jwks_app(fake_clerk)) as http:
        response = await http.get("/", headers=bearer(fake_clerk.session_token("u")))
    assert response.json()["reason"] == "jwk-remote-failed-to-load"


async def test_unknown_kid_refetch_is_bounded(fake_clerk: FakeClerk) -> None:
    async with client(jwks_app(fake_clerk)) as http:
        await http.get("/", headers=bearer(fake_clerk.session_token("u")))
        assert fake_clerk.calls["jwks"] == 1
        for i in range(5):
            stranger = fake_clerk.session_token("u", header={"kid": f"ins_unknown_{i}"})
            response = await http.get("/", headers=bearer(stranger))
            assert response.json()["reason"] == "jwk-kid-mismatch"
    assert fake_clerk.calls["jwks"] == 2  # the first unknown kid refetched; the rest waited


async def test_rotation_picks_up_new_key(fake_clerk: FakeClerk) -> None:
    async with client(jwks_app(fake_clerk)) as http:
        old = await http.get("/", headers=bearer(fake_clerk.session_token("u")))
        fake_clerk.rotate_key()
        new = await http.get("/", headers=bearer(fake_clerk.session_token("u")))
    assert old.json()["status"] == new.json()["status"] == "signed-in"
    assert fake_clerk.calls["jwks"] == 2


async def test_forged_signatures_cannot_hammer_clerk(fake_clerk: FakeClerk) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    async with client(jwks_app(fake_clerk)) as http:
        await http.get("/", headers=bearer(fake_clerk.session_token("u")))
        for _ in range(10):
            forged = fake_clerk.session_token("u", signing_key=other)
            response = await http.get("/", headers=bearer(forged))
            assert response.json()["reason"] == "token-invalid-signature"
    assert fake_clerk.calls["jwks"] == 2  # one refetch for the rotation check, then none


def test_keys_refresh_after_ttl_and_stale_keys_survive_outage(fake_clerk: FakeClerk) -> None:
    clock = FakeClock()
    engine = Engine(
        Settings(secret_key=fake_clerk.secret_key, clerk_api_url=fake_clerk.api_url), clock=clock
    )
    stepper = Stepper(clock, http=loopback())

    def verify() -> Verified | str:  # a new token each time: verified tokens are memoized
        token = fake_clerk.session_token("u", lifetime=int(10 * keys_module.STALE_LIMIT))
        return stepper.run(engine.verifier.verify(token))

    assert isinstance(verify(), Verified)
    clock.advance(keys_module.FRESH_FOR - 1)
    assert isinstance(verify(), Verified)
    assert fake_clerk.calls["jwks"] == 1
    clock.advance(2)  # past 5 minutes: refresh
    assert isinstance(verify(), Verified)
    assert fake_clerk.calls["jwks"] == 2
    fake_clerk.inject("jwks", status=500)
    clock.advance(keys_module.FRESH_FOR + 1)  # refresh fails: the last good keys still serve
    assert isinstance(verify(), Verified)
    assert fake_clerk.calls["jwks"] == 5  # three attempts, no real sleep between them
    assert stepper.sleeps == [0.05, 0.2]
    clock.advance(keys_module.STALE_LIMIT)  # an hour old: no longer trusted
    assert verify() == "jwk-remote-failed-to-load"


def test_an_unreachable_clerk_costs_one_budget_then_fails_fast(fake_clerk: FakeClerk) -> None:
    clock = FakeClock()
    engine = Engine(
        Settings(secret_key=fake_clerk.secret_key, clerk_api_url="http://x"), clock=clock
    )
    stepper = Stepper(clock, http=no_answer(clock))
    started = clock.monotonic()
    token = fake_clerk.session_token("u")
    assert stepper.run(engine.verifier.verify(token)) == "jwk-remote-failed-to-load"
    assert clock.monotonic() - started <= 3.0  # the whole retry budget, never more
    calls = len(stepper.requests)
    assert 1 <= calls <= 3
    clock.advance(keys_module.UNREACHABLE_PAUSE - 1)
    assert stepper.run(engine.verifier.verify(token)) == "jwk-remote-failed-to-load"
    assert len(stepper.requests) == calls  # failing fast, no new call
    clock.advance(2)
    stepper.run(engine.verifier.verify(token))
    assert len(stepper.requests) > calls  # tried again


async def test_pem_key_never_fetches(fake_clerk: FakeClerk) -> None:
    app = state_app(jwt_key=fake_clerk.public_key_pem, clerk_api_url=fake_clerk.api_url)
    async with client(app) as http:
        for kid in ("a", "b", "c"):
            token = fake_clerk.session_token("u", header={"kid": kid})
            assert (await http.get("/", headers=bearer(token))).json()["status"] == "signed-in"
    assert fake_clerk.calls["jwks"] == 0
