from __future__ import annotations

import subprocess
import sys

import pytest

from auth.service import AuthError, AuthService, LoginThrottled
from auth.tokens import TokenError
from configs.settings import PROJECT_ROOT, Settings
from storage.db import Database
from storage.kv import KV
from storage.repositories import refresh_tokens as refresh_repo
from storage.repositories import users as users_repo
from storage.telemetry import make_counter
from tests.fixtures.db import TEST_PASSWORD, add_user

in_session_loop = pytest.mark.asyncio(loop_scope="session")


class RecordingCounter:
    def __init__(self) -> None:
        self.calls: list[dict[str, str] | None] = []

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        self.calls.append(tags)


@pytest.fixture
def failures() -> RecordingCounter:
    return RecordingCounter()


@pytest.fixture
def auth(kv: KV, settings: Settings, failures: RecordingCounter) -> AuthService:
    return AuthService(kv, settings, failure_counter=failures)


@in_session_loop
async def test_login_issues_a_verifiable_pair(db: Database, auth: AuthService) -> None:
    async with db.session() as session:
        user = await add_user(session, "ada", "engineer")
        pair = await auth.login(session, "ada", TEST_PASSWORD)
    assert (pair.token_type, pair.expires_in) == ("bearer", auth.settings.access_token_ttl_s)
    access = await auth.verify_access_token(pair.access_token)
    refresh = auth.codec.decode(pair.refresh_token, expected_type="refresh")
    assert (access.user_id, access.role) == (user.id, "engineer")
    assert access.family_id == refresh.family_id
    async with db.session() as session:
        stored = await refresh_repo.get_refresh_token(session, refresh.jti)
        assert stored is not None and stored.used_at is None and stored.family_id == refresh.family_id


@in_session_loop
async def test_wrong_password_unknown_user_and_disabled_account(db: Database, auth: AuthService, failures) -> None:
    async with db.session() as session:
        user = await add_user(session, "ada")
        with pytest.raises(AuthError, match="incorrect username or password") as wrong:
            await auth.login(session, "ada", "wrong password")
        assert wrong.value.status_code == 401
        with pytest.raises(AuthError, match="incorrect username or password"):
            await auth.login(session, "nobody", TEST_PASSWORD)
        user.is_active = False
        await session.commit()
        with pytest.raises(AuthError, match="account is disabled"):
            await auth.login(session, "ada", TEST_PASSWORD)
    assert failures.calls == [{"reason": "bad_credentials"}] * 2 + [{"reason": "inactive"}]


@in_session_loop
async def test_login_is_throttled_after_max_failures(db: Database, auth: AuthService, failures) -> None:
    limit = auth.settings.login_max_failures
    async with db.session() as session:
        await add_user(session, "ada")
        await add_user(session, "bob")
        for _ in range(limit):
            with pytest.raises(AuthError, match="incorrect"):
                await auth.login(session, "ada", "guess")
        # Now even the right password is refused until the window ends.
        with pytest.raises(LoginThrottled) as throttled:
            await auth.login(session, "ADA", TEST_PASSWORD)  # usernames are throttled case-insensitively
        assert throttled.value.status_code == 429
        retry_after = int(throttled.value.headers["Retry-After"])
        assert 0 < retry_after <= auth.settings.login_failure_window_s
        assert "too many failed logins" in throttled.value.detail
        # Other usernames are unaffected.
        assert (await auth.login(session, "bob", TEST_PASSWORD)).access_token
    assert failures.calls.count({"reason": "bad_credentials"}) == limit
    assert failures.calls[-1] == {"reason": "throttled"}


@in_session_loop
async def test_a_successful_login_resets_the_failure_count(db: Database, auth: AuthService) -> None:
    async with db.session() as session:
        await add_user(session, "ada")
        for _ in range(auth.settings.login_max_failures - 1):
            with pytest.raises(AuthError):
                await auth.login(session, "ada", "guess")
        await auth.login(session, "ada", TEST_PASSWORD)
        for _ in range(auth.settings.login_max_failures - 1):
            with pytest.raises(AuthError, match="incorrect"):
                await auth.login(session, "ada", "guess")
        assert await auth.login(session, "ada", TEST_PASSWORD)


@in_session_loop
async def test_refresh_rotates_and_reuse_revokes_the_family(db: Database, auth: AuthService) -> None:
    async with db.session() as session:
        await add_user(session, "ada")
        first = await auth.login(session, "ada", TEST_PASSWORD)
        second = await auth.refresh(session, first.refresh_token)
        third = await auth.refresh(session, second.refresh_token)
        assert len({first.refresh_token, second.refresh_token, third.refresh_token}) == 3
        assert (await auth.verify_access_token(third.access_token)).family_id == (
            auth.codec.decode(first.refresh_token, expected_type="refresh").family_id
        )

        # A stolen, already used refresh token comes back: the whole session ends.
        with pytest.raises(AuthError, match="already used; this session has been revoked"):
            await auth.refresh(session, first.refresh_token)
        with pytest.raises(AuthError, match="has been revoked"):
            await auth.refresh(session, third.refresh_token)  # the legitimate holder's latest, too
        with pytest.raises(TokenError, match="revoked"):
            await auth.verify_access_token(third.access_token)

        # Another login is a new family and unaffected.
        fresh = await auth.login(session, "ada", TEST_PASSWORD)
        assert await auth.refresh(session, fresh.refresh_token)


@in_session_loop
async def test_refresh_refuses_access_tokens_garbage_and_unknown_tokens(db: Database, auth: AuthService) -> None:
    async with db.session() as session:
        user = await add_user(session, "ada")
        pair = await auth.login(session, "ada", TEST_PASSWORD)
        with pytest.raises(AuthError, match="refresh a access token was sent where a refresh token is needed"):
            await auth.refresh(session, pair.access_token)
        with pytest.raises(AuthError, match="refresh token is malformed"):
            await auth.refresh(session, "garbage")
        # Validly signed but never stored (e.g. issued by another deployment with the same secret).
        stray = auth.codec.issue(user_id=user.id, role="engineer", type="refresh", family_id="x").token
        with pytest.raises(AuthError, match="refresh token is unknown"):
            await auth.refresh(session, stray)


@in_session_loop
async def test_refresh_refuses_disabled_users_and_picks_up_role_changes(db: Database, auth: AuthService) -> None:
    async with db.session() as session:
        user = await add_user(session, "ada", "viewer")
        pair = await auth.login(session, "ada", TEST_PASSWORD)
        user.role = "engineer"
        await session.commit()
        pair = await auth.refresh(session, pair.refresh_token)
        assert (await auth.verify_access_token(pair.access_token)).role == "engineer"
        user.is_active = False
        await session.commit()
        with pytest.raises(AuthError, match="account is disabled"):
            await auth.refresh(session, pair.refresh_token)


@in_session_loop
async def test_logout_revokes_the_access_token_and_its_session(db: Database, auth: AuthService) -> None:
    async with db.session() as session:
        await add_user(session, "ada")
        here = await auth.login(session, "ada", TEST_PASSWORD)
        elsewhere = await auth.login(session, "ada", TEST_PASSWORD)
        other_device = await auth.login(session, "ada", TEST_PASSWORD)

        access = await auth.verify_access_token(here.access_token)
        await auth.logout(session, access, refresh_token=other_device.refresh_token)

        with pytest.raises(TokenError, match="revoked"):
            await auth.verify_access_token(here.access_token)
        with pytest.raises(AuthError, match="has been revoked"):
            await auth.refresh(session, here.refresh_token)
        with pytest.raises(AuthError, match="has been revoked"):
            await auth.refresh(session, other_device.refresh_token)  # named in the logout body
        # A session not named keeps working.
        assert await auth.verify_access_token(elsewhere.access_token)
        assert await auth.refresh(session, elsewhere.refresh_token)


@in_session_loop
async def test_logout_ignores_another_users_refresh_token(db: Database, auth: AuthService) -> None:
    async with db.session() as session:
        await add_user(session, "ada")
        await add_user(session, "bob")
        ada = await auth.login(session, "ada", TEST_PASSWORD)
        bob = await auth.login(session, "bob", TEST_PASSWORD)
        await auth.logout(session, await auth.verify_access_token(ada.access_token), refresh_token=bob.refresh_token)
        assert await auth.refresh(session, bob.refresh_token)


@in_session_loop
async def test_outdated_password_hashes_are_upgraded_on_login(db: Database, auth: AuthService) -> None:
    from argon2 import PasswordHasher

    weak = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1).hash(TEST_PASSWORD)
    async with db.session() as session:
        user = await users_repo.create_user(session, username="old", password_hash=weak, role="viewer")
        await session.commit()
        await auth.login(session, "old", TEST_PASSWORD)
    async with db.session() as session:
        upgraded = await users_repo.get_user(session, user.id)
        assert upgraded.password_hash != weak and upgraded.password_hash.startswith("$argon2id$")


@in_session_loop
async def test_the_service_refuses_to_start_with_an_unfit_secret(kv: KV, tmp_path) -> None:
    with pytest.raises(ValueError, match="HDX_JWT_SECRET is missing"):
        AuthService(kv, Settings(home=tmp_path, jwt_secret="", dev_mode=False))
    with pytest.raises(ValueError, match="at least 32 bytes"):
        AuthService(kv, Settings(home=tmp_path, jwt_secret="short", dev_mode=True))
    assert AuthService(kv, Settings(home=tmp_path, jwt_secret="", dev_mode=True))


def test_counters_are_noops_outside_ray() -> None:
    """In a fresh interpreter: this test process may already be attached to the session's Ray cluster."""
    code = (
        "from storage.telemetry import NoopCounter, make_counter\n"
        "counter = make_counter('hdx_test_counter', 'test')\n"
        "assert isinstance(counter, NoopCounter), type(counter)\n"
        "counter.inc(tags={'reason': 'x'})\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.ray
def test_counters_are_ray_metrics_inside_ray(ray_cluster) -> None:
    from ray.util.metrics import Counter

    counter = make_counter("hdx_test_login_failures", "test", ("reason",))
    assert isinstance(counter, Counter)
    counter.inc(tags={"reason": "bad_credentials"})


@in_session_loop
async def test_revocations_reach_other_replicas_through_the_database(db: Database, settings: Settings) -> None:
    from storage.kv import MemoryKV

    # Two replicas, each with its own in-process store: only the database links them.
    here, there = (AuthService(MemoryKV(), settings, db=db) for _ in range(2))
    async with db.session() as session:
        await add_user(session, "ada")
        pair = await here.login(session, "ada", TEST_PASSWORD)
        claims = await there.verify_access_token(pair.access_token)  # there has synced before the logout
        await here.logout(session, claims)
    await there.revocations.sync()  # what its next check does after revocation_sync_s
    with pytest.raises(TokenError, match="revoked"):
        await there.verify_access_token(pair.access_token)


@in_session_loop
async def test_expired_revocations_are_pruned(db: Database, settings: Settings) -> None:
    from datetime import UTC, datetime, timedelta

    from storage.kv import MemoryKV
    from storage.repositories import revocations as revocations_repo

    now = datetime.now(UTC)
    async with db.session() as session:
        await revocations_repo.add_revocations(
            session, [("jti", "old", now - timedelta(minutes=5)), ("family", "live", now + timedelta(minutes=5))]
        )
        await revocations_repo.add_revocations(session, [("family", "live", now + timedelta(minutes=5))])  # twice: fine
        await session.commit()
    auth = AuthService(MemoryKV(), settings, db=db)
    await auth.revocations.sync()
    async with db.session() as session:
        rows = await revocations_repo.unexpired(session, now - timedelta(hours=1))  # expired ones too, if any
        assert [(kind, token_id) for kind, token_id, _ in rows] == [("family", "live")]
    assert await auth.revocations.revoked("any", "live") == "family"
