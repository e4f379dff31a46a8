"""The maintenance assistant: ``POST /api/v1/rag/query``.

Authenticated like every route (``current_principal``); a ``system_id`` must be a
system the caller may access, and its latest diagnosis (if the ingress provides
``app.state.latest_diagnosis``, an async ``system_id -> dict | None``) steers
retrieval towards the flagged component and the answer starts from that
component's failure-mode document. The RagPipeline handle is ``app.state.rag``;
with ``stream: true`` the answer arrives as Server-Sent Events. Each source names
its section (``heading_path``, ``anchor``) and a ``url`` that
``GET /api/v1/rag/documents/{document_id}`` answers, the anchor a section of it.
The query's length limit is the app's ``settings.max_query_chars``.

A pipeline that cannot take the call (stopped, its replica gone, its queue full)
raises one of Serve's unavailability errors, which ``api.errors`` answers with
503 and ``Retry-After``. For a stream, its first event is awaited before the
response starts, so that failure is a 503 too rather than an error event in a 200.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator

from api.deps import PrincipalDep, SessionDep, load_accessible_system
from api.errors import InvalidInput, NotFound, Unavailable, error_responses
from api.schemas.inputs import ID_MAX_CHARS, SystemId, token

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1/rag", tags=["assistant"])
DocumentId = Annotated[token(ID_MAX_CHARS), Path(description="A document id, as in a source's document_id.")]


class RagQueryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: StrictStr = Field(description="The question, plain text (at most the service's max_query_chars).")
    system_id: SystemId | None = Field(None, description="Ground the answer in this system's latest diagnosis.")
    max_results: StrictInt = Field(5, ge=1, le=10, description="How many source documents to retrieve.")
    stream: StrictBool = Field(False, description="Answer as Server-Sent Events.")

    @field_validator("query")
    @classmethod
    def _plain_text(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("query must not be empty")
        if any(ord(ch) < 32 and ch not in "\n\r\t" for ch in value):
            raise ValueError("query must be plain text without control characters")
        return value


class Source(BaseModel):
    document_id: str
    title: str
    heading_path: str = ""
    anchor: str = Field("", description="The section's anchor within the document ('' for its start).")
    url: str = Field(description="Where the section can be read: the document route, with #anchor.")
    snippet: str = Field(description="The text answered from (a cited source), or the best-matching chunk.")
    score: float
    cited: bool = Field(description="Whether the answer is composed from this source ([n] = sources[n-1]).")


class DocumentSection(BaseModel):
    heading_path: str
    heading: str
    anchor: str
    kind: str = Field(description="overview, procedure, safety or explanation")
    text: str


class MaintenanceDocument(BaseModel):
    document_id: str
    title: str
    components: list[str]
    tags: list[str]
    index_version: str
    sections: list[DocumentSection]


class RagMetadata(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    processing_time_ms: float
    retrieval_ms: float
    tokens_used: int
    index_version: str | None
    degraded: bool = False
    degraded_reason: str | None = None


class RagQueryResponse(BaseModel):
    response: str = Field(description="The answer; [n] cites sources[n-1].")
    sources: list[Source]
    metadata: RagMetadata


def _pipeline(request: Request):
    rag = getattr(request.app.state, "rag", None)
    if rag is None:
        raise Unavailable("the maintenance assistant is not deployed")
    return rag


async def _latest_diagnosis(request: Request, system_id: str) -> dict | None:
    lookup = getattr(request.app.state, "latest_diagnosis", None)
    if lookup is None:
        return None
    try:
        return await lookup(system_id)
    except Exception:  # the answer is still useful without the diagnosis
        logger.exception("latest diagnosis for %s unavailable", system_id)
        return None


@router.post(
    "/query",
    response_model=RagQueryResponse,
    responses={
        200: {"content": {"text/event-stream": {"description": "with stream: true"}}},
        **error_responses(403, 404, 413, 422, 503),
    },
)
async def query(body: RagQueryRequest, request: Request, principal: PrincipalDep, session: SessionDep):
    limit = request.app.state.settings.max_query_chars
    if len(body.query) > limit:
        raise InvalidInput(
            ["body", "query"], f"Value error, query is {len(body.query)} characters long; the limit is {limit}"
        )
    diagnosis = None
    if body.system_id is not None:
        await load_accessible_system(session, principal, body.system_id)  # 404 / 403
        diagnosis = await _latest_diagnosis(request, body.system_id)
    rag = _pipeline(request)
    if body.stream:
        events = rag.options(stream=True).stream.remote(body.query, body.max_results, body.system_id, diagnosis)
        first = await anext(aiter(events), None)  # raises here, before a 200 is sent, when the pipeline is down
        return StreamingResponse(
            sse_events(_prepend(first, events)),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    return await rag.query.remote(body.query, body.max_results, body.system_id, diagnosis)


@router.get("/documents/{document_id}", response_model=MaintenanceDocument, responses=error_responses(404, 422, 503))
async def document(document_id: DocumentId, request: Request, principal: PrincipalDep):
    """A maintenance document of the served index, section by section, with the anchors sources link to."""
    found = await _pipeline(request).document.remote(document_id)
    if found is None:
        raise NotFound(f"no document {document_id!r} in the served knowledge index")
    return found


async def _prepend(first: dict | None, rest: AsyncIterator[dict]) -> AsyncIterator[dict]:
    if first is None:
        return
    yield first
    async for event in rest:
        yield event


async def sse_events(events: AsyncIterator[dict]) -> AsyncIterator[str]:
    """Pipeline events -> SSE: ``data: {"token": ...}`` per piece, then ``event: done``.

    ``event: replace`` (``data: {"text": ...}``) withdraws everything sent so far: the
    generative answer failed its citation check or its backend, and this is the
    extractive answer instead (the done event says ``degraded`` and why)."""
    done = False
    try:
        async for event in events:
            if event.get("event") == "done":
                done = True
                payload = {"sources": event["sources"], "metadata": event["metadata"]}
                yield f"event: done\ndata: {json.dumps(payload)}\n\n"
            elif event.get("event") == "replace":
                yield f"event: replace\ndata: {json.dumps({'text': event['text']})}\n\n"
            else:
                yield f"data: {json.dumps({'token': event['text']})}\n\n"
    except Exception as exc:  # the stream is already open: report in-band, then end it properly
        logger.exception("assistant stream failed")
        yield f"event: error\ndata: {json.dumps({'detail': f'{type(exc).__name__}: the assistant failed'})}\n\n"
    if not done:
        yield f"event: done\ndata: {json.dumps({'sources': [], 'metadata': {'degraded': True}})}\n\n"
