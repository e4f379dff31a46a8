"""Request and response models of the equipment registry (/api/v1/systems)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from api.schemas.inputs import DbId, Username, text, token
from hydraulics.channels import CHANNELS, canonical_name

SYSTEM_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
Token64 = token(64)
Name = text(200, min_length=1)
Text200 = text(200)
# What a topology node may be. Anything else is almost always a typo, so it is refused.
COMPONENT_KINDS = frozenset(
    {
        "pump",
        "motor",
        "valve",
        "cooler",
        "accumulator",
        "filter",
        "tank",
        "cylinder",
        "sensor",
        "heat_exchanger",
        "manifold",
        "hose",
        "pipe",
        "relief_valve",
        "check_valve",
        "hydraulic_motor",
        "gauge",
    }
)


class TopologyNode(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: Token64
    kind: Token64
    label: Text200 | None = None
    channel: Token64 | None = Field(None, description="for sensor nodes: the catalogue channel it reports")


class TopologyEdge(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    source: Token64 = Field(alias="from")
    target: Token64 = Field(alias="to")
    kind: Token64 | None = Field(None, description="e.g. pressure_line, return_line, signal")


class Topology(BaseModel):
    """Components and the lines between them; every edge joins two declared nodes."""

    model_config = ConfigDict(extra="forbid")
    nodes: list[TopologyNode] = []
    edges: list[TopologyEdge] = []

    @model_validator(mode="after")
    def _consistent(self) -> Topology:
        seen: set[str] = set()
        for i, node in enumerate(self.nodes):
            if node.id in seen:
                raise ValueError(f"nodes[{i}]: duplicate node id {node.id!r}")
            seen.add(node.id)
            if node.kind not in COMPONENT_KINDS:
                raise ValueError(
                    f"nodes[{i}] ({node.id!r}): unknown component kind {node.kind!r}; "
                    f"expected one of {sorted(COMPONENT_KINDS)}"
                )
            if node.channel is not None:
                try:
                    node.channel = canonical_name(node.channel)
                except KeyError as exc:
                    raise ValueError(f"nodes[{i}] ({node.id!r}): {exc.args[0]}") from None
        for i, edge in enumerate(self.edges):
            for end in (edge.source, edge.target):
                if end not in seen:
                    raise ValueError(
                        f"edges[{i}] ({edge.source!r} -> {edge.target!r}): node {end!r} is not declared in nodes"
                    )
            if edge.source == edge.target:
                raise ValueError(f"edges[{i}]: node {edge.source!r} is connected to itself")
        return self


def _canonical_channels(names: list[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        try:
            canonical = canonical_name(name)
        except KeyError as exc:
            raise ValueError(exc.args[0]) from None
        if canonical in out:
            raise ValueError(f"channel {canonical} is listed twice")
        out.append(canonical)
    return out


def channel_specs(names: list[str]) -> list[dict]:
    """Stored form of a channel list: the catalogue facts a client needs to send data."""
    return [
        {"name": n, "quantity": CHANNELS[n].quantity, "unit": CHANNELS[n].unit, "rate_hz": CHANNELS[n].rate_hz}
        for n in names
    ]


class SystemCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "id": "rig-01",
                "name": "Test rig 1",
                "type": "hydraulic_rig",
                "location": "Hall B",
                "channels": ["TS1", "TS2", "PS1"],
                "topology": {
                    "nodes": [{"id": "p1", "kind": "pump"}, {"id": "v1", "kind": "valve"}],
                    "edges": [{"from": "p1", "to": "v1"}],
                },
            }
        },
    )

    id: str = Field(pattern=SYSTEM_ID_PATTERN)
    name: Name
    type: Token64 = "hydraulic_rig"
    location: Text200 | None = None
    owner_id: DbId | None = Field(None, description="admins only: register the system for another user")
    channels: list[Token64] = Field(
        default_factory=list, max_length=64, description="catalogue channel names or aliases"
    )
    topology: Topology = Field(default_factory=Topology)
    profile: Token64 | None = Field(
        None,
        description="the equipment profile to diagnose it with; default: the best trained profile whose "
        "channels the system reports (GET shows which and why)",
    )

    @field_validator("channels")
    @classmethod
    def _channels(cls, value: list[str]) -> list[str]:
        return _canonical_channels(value)


class SystemUpdate(BaseModel):
    """Only the fields given are changed."""

    model_config = ConfigDict(extra="forbid")
    name: Name | None = None
    type: Token64 | None = None
    location: Text200 | None = None
    channels: list[Token64] | None = Field(None, max_length=64)
    topology: Topology | None = None
    profile: Token64 | None = Field(None, description="a trained profile, or null to choose automatically")

    @field_validator("channels")
    @classmethod
    def _channels(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _canonical_channels(value)


class SystemOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    name: str
    type: str
    location: str | None
    owner_id: int
    channels: list[dict]
    topology: dict
    profile: str | None = Field(description="the equipment profile its diagnoses use (null: none fits)")
    profile_reason: str | None = Field(description="why this profile: set explicitly or chosen automatically")
    created_at: datetime


class SystemPage(BaseModel):
    items: list[SystemOut]
    total: int
    limit: int
    offset: int


class MemberIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: Username
    permission: Literal["read", "write"] = "read"


class MemberOut(BaseModel):
    user_id: int
    username: str
    permission: str
    granted_by: int | None
    created_at: datetime
