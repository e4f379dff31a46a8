"""The equipment registry: CRUD, topology validation, who may see and change what."""

from __future__ import annotations

import pytest

from tests.test_platform_support import platform  # noqa: F401  (fixture)

TOPOLOGY = {
    "nodes": [
        {"id": "m1", "kind": "motor"},
        {"id": "p1", "kind": "pump"},
        {"id": "v1", "kind": "valve"},
        {"id": "c1", "kind": "cooler"},
        {"id": "t1", "kind": "sensor", "channel": "temperature"},
    ],
    "edges": [
        {"from": "m1", "to": "p1"},
        {"from": "p1", "to": "v1"},
        {"from": "v1", "to": "c1"},
        {"from": "t1", "to": "c1", "kind": "signal"},
    ],
}


def body(system_id: str, **extra) -> dict:
    return {
        "id": system_id,
        "name": f"Rig {system_id}",
        "location": "Hall B",
        "channels": ["TS1", "vibration"],
        "topology": TOPOLOGY,
        **extra,
    }


def test_create_read_update_delete(platform):
    eng = platform.user("engineer")
    c = platform.client
    r = c.post("/api/v1/systems", json=body("rig-a"), headers=eng["headers"])
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["owner_id"] == eng["id"] and [ch["name"] for ch in out["channels"]] == ["TS1", "VS1"]
    assert out["topology"]["nodes"][4]["channel"] == "TS1"  # alias stored under its catalogue name
    assert out["topology"]["edges"][0] == {"from": "m1", "to": "p1"}

    assert c.post("/api/v1/systems", json=body("rig-a"), headers=eng["headers"]).status_code == 409
    got = c.get("/api/v1/systems/rig-a", headers=eng["headers"]).json()
    assert got["name"] == "Rig rig-a"

    r = c.patch("/api/v1/systems/rig-a", json={"location": "Hall C", "channels": ["PS1"]}, headers=eng["headers"])
    assert r.status_code == 200, r.text
    assert r.json()["location"] == "Hall C" and r.json()["name"] == "Rig rig-a"
    assert [ch["name"] for ch in r.json()["channels"]] == ["PS1"]

    assert c.delete("/api/v1/systems/rig-a", headers=eng["headers"]).status_code == 204
    assert c.get("/api/v1/systems/rig-a", headers=eng["headers"]).status_code == 404
    assert c.get("/api/v1/systems", headers=eng["headers"]).json()["total"] == 0
    # The id stays taken: the deleted system's history still names it.
    assert c.post("/api/v1/systems", json=body("rig-a"), headers=eng["headers"]).status_code == 409


@pytest.mark.parametrize(
    "topology, message",
    [
        (
            {"nodes": [{"id": "p1", "kind": "pump"}], "edges": [{"from": "p1", "to": "ghost"}]},
            "node 'ghost' is not declared",
        ),
        ({"nodes": [{"id": "p1", "kind": "pump"}, {"id": "p1", "kind": "valve"}]}, "duplicate node id 'p1'"),
        ({"nodes": [{"id": "x", "kind": "flux_capacitor"}]}, "unknown component kind 'flux_capacitor'"),
        ({"nodes": [{"id": "s", "kind": "sensor", "channel": "XX9"}]}, "unknown channel 'XX9'"),
        ({"nodes": [{"id": "p1", "kind": "pump"}], "edges": [{"from": "p1", "to": "p1"}]}, "connected to itself"),
    ],
)
def test_topology_errors_name_the_bad_node_or_edge(platform, topology, message):
    eng = platform.user("engineer")
    r = platform.client.post("/api/v1/systems", json=body("rig-bad", topology=topology), headers=eng["headers"])
    assert r.status_code == 422
    assert message in r.text, r.text
    assert r.json()["detail"][0]["loc"][:2] == ["body", "topology"]


def test_unknown_channel_is_refused(platform):
    eng = platform.user("engineer")
    r = platform.client.post("/api/v1/systems", json=body("rig-x", channels=["TS1", "BOGUS"]), headers=eng["headers"])
    assert r.status_code == 422 and "unknown channel 'BOGUS'" in r.text
    assert r.json()["detail"][0]["loc"] == ["body", "channels"]


def test_viewer_cannot_modify_and_stranger_cannot_see(platform):
    c = platform.client
    owner, viewer, stranger, admin = (
        platform.user("engineer"),
        platform.user("viewer"),
        platform.user("engineer"),
        platform.user("admin"),
    )
    assert c.post("/api/v1/systems", json=body("rig-v"), headers=owner["headers"]).status_code == 201
    r = c.post("/api/v1/systems", json=body("rig-w"), headers=viewer["headers"])
    assert r.status_code == 403 and "viewer" in r.json()["detail"]

    assert c.get("/api/v1/systems/rig-v", headers=stranger["headers"]).status_code == 403
    assert c.get("/api/v1/systems", headers=stranger["headers"]).json()["items"] == []

    r = c.post("/api/v1/systems/rig-v/members", json={"username": viewer["username"]}, headers=owner["headers"])
    assert r.status_code == 201 and r.json()["permission"] == "read"
    assert c.get("/api/v1/systems/rig-v", headers=viewer["headers"]).status_code == 200
    assert [s["id"] for s in c.get("/api/v1/systems", headers=viewer["headers"]).json()["items"]] == ["rig-v"]
    assert c.patch("/api/v1/systems/rig-v", json={"name": "mine"}, headers=viewer["headers"]).status_code == 403
    assert c.delete("/api/v1/systems/rig-v", headers=viewer["headers"]).status_code == 403
    members = c.get("/api/v1/systems/rig-v/members", headers=viewer["headers"]).json()
    assert [m["username"] for m in members] == [viewer["username"]]

    # A write member may edit but not delete or share: those belong to the owner.
    c.post(
        "/api/v1/systems/rig-v/members",
        json={"username": stranger["username"], "permission": "write"},
        headers=owner["headers"],
    )
    assert c.patch("/api/v1/systems/rig-v", json={"name": "edited"}, headers=stranger["headers"]).status_code == 200
    r = c.delete("/api/v1/systems/rig-v", headers=stranger["headers"])
    assert r.status_code == 403 and "owner" in r.json()["detail"]

    assert c.delete(f"/api/v1/systems/rig-v/members/{viewer['id']}", headers=owner["headers"]).status_code == 204
    assert c.get("/api/v1/systems/rig-v", headers=viewer["headers"]).status_code == 403
    assert c.delete(f"/api/v1/systems/rig-v/members/{viewer['id']}", headers=owner["headers"]).status_code == 404
    assert c.get("/api/v1/systems/rig-v", headers=admin["headers"]).status_code == 200


def test_list_is_paginated(platform):
    eng = platform.user("engineer")
    for i in range(5):
        assert platform.client.post("/api/v1/systems", json=body(f"rig-{i}"), headers=eng["headers"]).status_code == 201
    page = platform.client.get("/api/v1/systems?limit=2&offset=2", headers=eng["headers"]).json()
    assert page["total"] == 5 and [s["id"] for s in page["items"]] == ["rig-2", "rig-3"]
    r = platform.client.get("/api/v1/systems?limit=0", headers=eng["headers"])
    assert r.status_code == 422


def test_bootstrap_carries_on_when_the_demo_system_was_deleted(db, database_url, tmp_path, monkeypatch, capsys):
    """The quick start's second run, after ``rig-01`` was deleted: the id stays taken and the bootstrap says so."""
    from cli import bootstrap
    from storage.repositories import systems as systems_repo

    monkeypatch.setenv("HDX_HOME", str(tmp_path))
    monkeypatch.setenv("HDX_DATABASE_URL", database_url)
    password, deleted = bootstrap._ensure_admin_and_system()
    assert password and deleted is False

    async def delete_demo(session):
        await systems_repo.soft_delete_system(session, await systems_repo.get_system(session, bootstrap.DEMO_SYSTEM))
        await session.commit()

    from cli.users import run_db

    run_db(delete_demo)
    assert bootstrap._ensure_admin_and_system() == (None, True)
    assert bootstrap._ensure_admin_and_system() == (None, True)  # and again: idempotent
