"""gRPC servicers (``grpc.aio``) over the shared core (CONTRACT.md §4): ``gooseai.GenerationService``
(Generate, ChainGenerate), ``EnginesService`` (ListEngines) and ``DashboardService`` (GetMe,
GetOrganization; the other dashboard RPCs answer UNIMPLEMENTED, the generated base's default).

Authentication: metadata ``authorization: Bearer <key>`` through the same
``api.deps.principal_for_key`` as REST; on the insecure port (no key sent by stability-sdk)
every call acts for the configured organization. Domain errors become status codes:
UNAUTHENTICATED, PERMISSION_DENIED, NOT_FOUND (engine), INVALID_ARGUMENT (the REST
validation messages), RESOURCE_EXHAUSTED (credits, admission control), UNAVAILABLE (weights
not ready), CANCELLED, INTERNAL. A client that goes away cancels its job (credits released).
A prompt refused by content moderation is not an error but one ``ARTIFACT_TEXT`` answer with
``finish_reason=FILTER`` (stability-sdk's ``api.Context`` raises ``ClassifierException``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc
from starlette.concurrency import run_in_threadpool

from stableserve import errors as e
from stableserve.api.deps import AppState, Principal, bearer_or_raw, principal_for_key
from stableserve.api.errors import new_request_id
from stableserve.api.grpc import convert
from stableserve.api.grpc.generated import dashboard_pb2 as dpb
from stableserve.api.grpc.generated import dashboard_pb2_grpc, engines_pb2_grpc, generation_pb2_grpc
from stableserve.api.grpc.generated import engines_pb2 as epb
from stableserve.api.grpc.generated import generation_pb2 as pb
from stableserve.observability.logs import request_id_var

log = logging.getLogger("stableserve.grpc")

ROLES = {"MEMBER": dpb.MEMBER, "ACCOUNTANT": dpb.ACCOUNTANT, "OWNER": dpb.OWNER}
"""Membership roles -> ``OrganizationRole``."""

_STATUS = (
    (e.Unauthorized, grpc.StatusCode.UNAUTHENTICATED),
    (e.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (e.ContentModerated, grpc.StatusCode.PERMISSION_DENIED),  # only outside Generate/ChainGenerate
    (e.NotFound, grpc.StatusCode.NOT_FOUND),
    (e.InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (e.InsufficientCredits, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (e.RateLimited, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (e.Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (e.EngineNotReady, grpc.StatusCode.UNAVAILABLE),
    (e.GenerationCancelled, grpc.StatusCode.CANCELLED),
)


def status_for(exc: Exception) -> tuple[grpc.StatusCode, str]:
    """The gRPC status code and details for a domain error (INTERNAL, generic, otherwise)."""
    exc = e.as_domain_error(exc)  # a bound of a core type (pydantic) is INVALID_ARGUMENT
    for kind, code in _STATUS:
        if isinstance(exc, kind):
            return code, exc.message
    return grpc.StatusCode.INTERNAL, "An unexpected server error occurred, please try again."


class Auth:
    """Who a call acts for: the key in its metadata, or ``insecure_org`` on the insecure port."""

    def __init__(self, state: AppState, insecure_org: str | None = None):
        self.state = state
        self.insecure_org = insecure_org

    def _org_principal(self) -> Principal:
        from stableserve.accounts import keys as keys_mod
        from stableserve.accounts import orgs as orgs_mod
        from stableserve.accounts import plans as plans_mod

        with self.state.sessions() as session:
            org = orgs_mod.get_org(session, self.insecure_org)
            owner = keys_mod.org_owner(session, org)
            user_id, email, org_id = owner.id, owner.email, org.id
            limit = plans_mod.rate_limit_for(session, org_id)
        limiter = self.state.limiter
        rate = limiter.hit(f"org:{org_id}", limit) if limiter is not None else None
        return Principal(key_id="", user_id=user_id, email=email, org_id=org_id, rate=rate)

    async def principal(self, context: grpc.aio.ServicerContext) -> Principal:
        """Authenticate the call; raises ``Unauthorized`` (missing or bad key).

        Also gives the call a request id: the ``x-request-id`` initial metadata and the
        ``request_id`` of its log lines (``observability.logs``)."""
        rid = new_request_id()
        request_id_var.set(rid)  # the servicer's task: scoped to this call
        await context.send_initial_metadata((("x-request-id", rid),))
        if self.insecure_org is not None:
            return await run_in_threadpool(self._org_principal)
        metadata = dict(context.invocation_metadata() or ())
        raw = bearer_or_raw(metadata.get("authorization"))
        return await run_in_threadpool(principal_for_key, self.state, raw)


async def _abort(context: grpc.aio.ServicerContext, exc: Exception, what: str):
    code, details = status_for(exc)
    if code == grpc.StatusCode.INTERNAL:
        log.exception("gRPC %s failed", what)
    else:
        log.info("gRPC %s -> %s: %s", what, code.name, details)
    await context.abort(code, details)


class GenerationServicer(generation_pb2_grpc.GenerationServiceServicer):
    """``gooseai.GenerationService``: one ``Answer`` per generated image."""

    def __init__(self, state: AppState, auth: Auth):
        self.state = state
        self.auth = auth

    async def _run(self, principal: Principal, request: pb.Request) -> list[pb.Answer]:
        received = convert.now_ms()
        engine = self.state.registry.get(request.engine_id)
        gen = await run_in_threadpool(convert.to_generation_request, request, engine)
        artifacts = await self.state.service.generate(principal, gen)
        return [convert.answer(request.request_id, engine.id, a, received) for a in artifacts]

    async def Generate(self, request: pb.Request, context) -> AsyncIterator[pb.Answer]:  # noqa: N802
        """Run one request; stream its answers. Cancelled calls cancel the job. A prompt refused
        by content moderation is one ``ARTIFACT_TEXT`` answer with ``finish_reason=FILTER``."""
        try:
            principal = await self.auth.principal(context)
            answers = await self._run(principal, request)
        except e.ContentModerated as exc:  # an answer, not an error: stability-sdk's ClassifierException
            log.info("gRPC Generate -> FILTER: prompt refused by content moderation (%s)", exc.field)
            text = exc.text or exc.message
            answers = [convert.moderated_answer(request.request_id, request.engine_id, text)]
        except e.StableServeError as exc:
            await _abort(context, exc, "Generate")
        except Exception as exc:  # noqa: BLE001 - mapped to INTERNAL, logged with its traceback
            await _abort(context, exc, "Generate")
        for item in answers:
            yield item

    async def ChainGenerate(self, request: pb.ChainRequest, context) -> AsyncIterator[pb.Answer]:  # noqa: N802
        """Run the stages from the first one on. ``OnStatus`` actions: RETURN streams the
        stage's answers, PASS feeds its images to ``target`` as init image prompts, DISCARD
        drops them; a stage without ``on_status`` returns its answers."""
        try:
            principal = await self.auth.principal(context)
            stages = {stage.id: stage for stage in request.stage}
            pending = [request.stage[0].id] if request.stage else []
            inputs: dict[str, list[bytes]] = {}
            results: list[pb.Answer] = []
            seen: set[str] = set()
            while pending:
                stage_id = pending.pop(0)
                if stage_id in seen or stage_id not in stages:
                    raise e.InvalidRequest(f"stage: unknown or repeated stage {stage_id!r}", param="stage")
                seen.add(stage_id)
                stage = stages[stage_id]
                req = pb.Request()
                req.CopyFrom(stage.request)
                if not req.request_id:
                    req.request_id = request.request_id
                for image in inputs.get(stage_id, []):
                    req.prompt.append(pb.Prompt(artifact=pb.Artifact(type=pb.ARTIFACT_IMAGE, binary=image)))
                try:
                    answers = await self._run(principal, req)
                except e.ContentModerated as exc:  # the chain stops with the FILTER answer
                    log.info("gRPC ChainGenerate -> FILTER: prompt refused by moderation (%s)", exc.field)
                    text = exc.text or exc.message
                    results.append(convert.moderated_answer(req.request_id, req.engine_id, text))
                    break
                actions = list(stage.on_status) or [pb.OnStatus(action=[pb.STAGE_ACTION_RETURN])]
                for status in actions:
                    if pb.STAGE_ACTION_RETURN in status.action:
                        results.extend(answers)
                    if pb.STAGE_ACTION_PASS in status.action and status.target:
                        images = [a.binary for answer in answers for a in answer.artifacts]
                        inputs.setdefault(status.target, []).extend(images[:1])
                        pending.append(status.target)
        except e.StableServeError as exc:
            await _abort(context, exc, "ChainGenerate")
        except Exception as exc:  # noqa: BLE001
            await _abort(context, exc, "ChainGenerate")
        for item in results:
            yield item


class EnginesServicer(engines_pb2_grpc.EnginesServiceServicer):
    """``gooseai.EnginesService/ListEngines``: the registry, with ``ready`` from readiness."""

    def __init__(self, state: AppState, auth: Auth):
        self.state = state
        self.auth = auth

    async def ListEngines(self, request, context) -> epb.Engines:  # noqa: N802
        """Every engine of the registry (``type=PICTURE``, ``owner=stability-ai``)."""
        from stableserve.inference.loading import readiness

        try:
            await self.auth.principal(context)
        except e.StableServeError as exc:
            await _abort(context, exc, "ListEngines")
        return epb.Engines(
            engine=[
                epb.EngineInfo(
                    id=spec.id,
                    owner="stability-ai",
                    ready=readiness(spec, self.state.settings).ready,
                    type=epb.PICTURE,
                    tokenizer=epb.GPT2,
                    name=spec.name,
                    description=spec.description,
                )
                for spec in self.state.registry.engines
            ]
        )


class DashboardServicer(dashboard_pb2_grpc.DashboardServiceServicer):
    """``gooseai.DashboardService``: GetMe and GetOrganization (balance from the ledger)."""

    def __init__(self, state: AppState, auth: Auth):
        self.state = state
        self.auth = auth

    def _me(self, principal: Principal) -> dpb.User:
        from stableserve.accounts import orgs as orgs_mod

        with self.state.sessions() as session:
            members = orgs_mod.user_orgs(session, principal.user_id)
            return dpb.User(
                id=principal.user_id,
                email=principal.email,
                organizations=[
                    dpb.OrganizationMember(
                        organization=dpb.Organization(id=org.id, name=org.name, description=org.description),
                        role=ROLES.get(m.role, dpb.MEMBER),
                        is_default=m.is_default,
                    )
                    for org, m in members
                ],
            )

    def _organization(self, principal: Principal, org_id: str) -> dpb.Organization:
        from stableserve.accounts import ledger
        from stableserve.accounts import orgs as orgs_mod

        with self.state.sessions() as session:
            members = {org.id: org for org, _m in orgs_mod.user_orgs(session, principal.user_id)}
            org = members.get(org_id or principal.org_id)
            if org is None:
                raise e.NotFound(f"organization {org_id} not found")
            balance = float(ledger.balance(session, org.id))
            return dpb.Organization(
                id=org.id,
                name=org.name,
                description=org.description,
                payment_info=dpb.OrganizationPaymentInfo(balance=balance),
            )

    async def GetMe(self, request, context) -> dpb.User:  # noqa: N802
        """The key's user and its organizations."""
        try:
            principal = await self.auth.principal(context)
            return await run_in_threadpool(self._me, principal)
        except e.StableServeError as exc:
            await _abort(context, exc, "GetMe")

    async def GetOrganization(self, request, context) -> dpb.Organization:  # noqa: N802
        """An organization of the key's user, with ``payment_info.balance`` in credits."""
        try:
            principal = await self.auth.principal(context)
            return await run_in_threadpool(self._organization, principal, request.id)
        except e.StableServeError as exc:
            await _abort(context, exc, "GetOrganization")
