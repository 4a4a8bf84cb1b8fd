"""``WS /api/v1/ws``: the job requests and event streams of the REST API over one socket.

A client sends JSON messages (``auth``, ``chat|compare|blend|judge`` with its own ``id``,
``cancel``, ``follow``, ``ping``); the server answers ``ready``, ``accepted``, ``event``
(one per job event, tagged with the client id and job id), ``done`` (a job's ``[DONE]``),
``reconnect`` (the relay broke off, not the job: ``follow`` resumes it), ``cancelling``,
``pong`` and ``error``. Each job is relayed by its own greenlet, so many
jobs share one socket; closing the socket cancels the jobs it started unless they asked
for ``keep_running``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, TypeVar

import gevent
import redis
from flask import Blueprint, Flask, Response, current_app, request
from flask_sock import Sock
from gevent.lock import Semaphore
from pydantic import BaseModel
from simple_websocket import ConnectionClosed
from werkzeug.routing import WebsocketMismatch
from wsproto.utilities import RemoteProtocolError

from api import drain as api_drain
from api import idempotency
from api.auth import authenticate, lookup_key
from api.errors import ApiError, bad_request, not_found, unavailable
from api.jobs import RowFinal, replayed_job, request_cancel, start_job
from api.jsontext import decode
from api.owned import load_job
from api.ratelimit import RateLimiter, client_ip
from api.relay import Ended, Relay, follow
from api.streaming import on_disconnect
from api.submit import enqueue, validate_json
from shared import events, keys
from shared.schemas import JOB_KINDS
from shared.settings import Settings

log = logging.getLogger(__name__)

bp = Blueprint("ws", __name__)
sock = Sock()

AUTH_TIMEOUT_S = 30.0
MAX_JOBS_PER_SOCKET = 100
MAX_CLIENT_ID = 100
# A job message's ``Idempotency-Key``, as a field (a socket's messages have no headers).
IDEMPOTENCY_FIELD = "idempotency_key"

M = TypeVar("M", bound=BaseModel)


def error_message(client_id: str | None, err: ApiError) -> dict[str, Any]:
    """The REST error body, tagged like every other message on the socket."""
    error: dict[str, Any] = {"code": err.code, "message": err.message}
    if err.param is not None:
        error["param"] = err.param
    return {"type": "error", "id": client_id, "status": err.status, "error": error, **err.extra}


def validate(model: type[M], payload: dict[str, Any]) -> M:
    """The REST endpoints' strict validation, applied to a message instead of a body."""
    return validate_json(model, json.dumps(payload))


def owner_for_key(token: str) -> keys.KeyOwner:
    owner = lookup_key(token.strip())
    if owner is None:
        raise ApiError(401, "unauthorized", "invalid API key")
    return owner


@dataclass
class Relayed:
    """One job this socket relays."""

    job_id: str
    cancel_on_close: bool
    greenlet: gevent.Greenlet | None = None
    finished: bool = False
    # The relay broke off (Redis unavailable), not the job: a ``follow`` resumes it.
    interrupted: bool = False
    last: int = 0  # the sequence number of the last event sent


@dataclass
class SocketSession:
    ws: Any
    relay: Relay
    redis: redis.Redis
    owner: keys.KeyOwner | None = None
    jobs: dict[str, Relayed] = field(default_factory=dict)
    draining: bool = False
    # wsproto's compressor state and the socket must see one whole message at a time.
    _send_lock: Semaphore = field(default_factory=Semaphore)

    def send(self, message: dict[str, Any] | str) -> None:
        text = message if isinstance(message, str) else events.encode(message)
        with self._send_lock:
            self.ws.send(text)

    def run(self) -> None:
        if request.headers.get("Authorization"):
            self.owner = authenticate()
        else:
            self.owner = self._wait_auth()
        self.send({"type": "ready"})
        while True:
            raw = self.ws.receive()
            client_id: str | None = None
            try:
                msg = _parse(raw)
                client_id = msg.get("id") if isinstance(msg.get("id"), str) else None
                self.handle(msg)
            except ApiError as err:
                self.send(error_message(client_id, err))
            except ConnectionClosed:
                raise
            except Exception:
                # One bad message must not take the other jobs on the socket down with it.
                log.exception("websocket message failed")
                self.send(error_message(client_id, ApiError(500, "internal_error",
                                                            "internal server error")))

    def _wait_auth(self) -> keys.KeyOwner:
        raw = self.ws.receive(timeout=AUTH_TIMEOUT_S)
        if raw is None:
            raise ApiError(401, "unauthorized", "no auth message within 30 s")
        msg = _parse(raw)
        token = msg.get("key")
        if msg.get("type") != "auth" or not isinstance(token, str):
            raise ApiError(401, "unauthorized",
                           'send {"type": "auth", "key": "<key>"} first, or an Authorization '
                           "header with the upgrade request")
        return owner_for_key(token)

    def handle(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "ping":
            self.send({"type": "pong", "id": msg.get("id")})
        elif kind in JOB_KINDS:
            self.submit(str(kind), msg)
        elif kind == "cancel":
            self.cancel(_client_id(msg))
        elif kind == "follow":
            self.follow_existing(msg)
        else:
            raise bad_request("type must be one of chat, compare, blend, judge, cancel, "
                              "follow, ping", "type")

    def _claim_id(self, msg: dict[str, Any]) -> str:
        client_id = _client_id(msg)
        current = self.jobs.get(client_id)
        if current is not None and not current.finished:
            raise bad_request(f"id {client_id!r} names a job still running on this socket",
                              "id")
        if sum(not j.finished for j in self.jobs.values()) >= MAX_JOBS_PER_SOCKET:
            raise ApiError(429, "too_many_jobs",
                           f"at most {MAX_JOBS_PER_SOCKET} running jobs per socket")
        return client_id

    def submit(self, kind: str, msg: dict[str, Any]) -> None:
        assert self.owner is not None
        client_id = self._claim_id(msg)
        body = {k: v for k, v in msg.items() if k not in ("type", "id", IDEMPOTENCY_FIELD)}
        req = validate(JOB_KINDS[kind], body)
        raw_key = msg.get(IDEMPOTENCY_FIELD)
        if raw_key is not None and not isinstance(raw_key, str):
            raise bad_request(f"{IDEMPOTENCY_FIELD} must be a string", IDEMPOTENCY_FIELD)
        # Hashed as the REST request of the same kind: the key means the same either way.
        claim = idempotency.claim_of(raw_key, kind, lambda: req.model_dump(
            mode="json", exclude_none=True), IDEMPOTENCY_FIELD)
        self._take_rate_token(kind)
        try:
            job_id = start_job(self.owner, kind, req, claim=claim)
        except idempotency.KeyUsed as used:
            # The first request's job, from its first event; this socket does not own it.
            job_id = replayed_job(used)
            load_job(job_id, self.owner.account_id)
            self.send({"type": "accepted", "id": client_id, "job_id": job_id,
                       "replayed": True})
            self._relay(client_id, job_id, 0, cancel_on_close=False)
            return
        self.send({"type": "accepted", "id": client_id, "job_id": job_id})
        # As over HTTP, a job with a key runs on when its client leaves.
        keep = req.keep_running or claim is not None
        job = self._relay(client_id, job_id, 0, cancel_on_close=not keep, own=True)
        try:
            enqueue(job_id)
        except ApiError:
            if job.greenlet is not None:
                job.greenlet.kill(block=False)
            job.finished = True
            raise

    def _take_rate_token(self, kind: str) -> None:
        """A job over the socket draws on the same buckets as one over HTTP."""
        limiter: RateLimiter | None = current_app.extensions.get("chorus.ratelimit")
        if limiter is None:
            return
        settings: Settings = current_app.config["CHORUS_SETTINGS"]
        buckets = limiter.buckets_for(kind, self.owner, client_ip(settings.trusted_proxies))
        try:
            decision = limiter.take(buckets)
        except redis.RedisError as exc:
            raise unavailable("redis") from exc
        if not decision.allowed:
            raise ApiError(429, "rate_limited",
                           f"rate limit of {decision.limit} {kind} requests per minute "
                           f"reached; retry in {decision.retry_after_s} s",
                           retry_after=decision.retry_after_s)

    def follow_existing(self, msg: dict[str, Any]) -> None:
        """Re-attach to a job (after a reconnect); a reader never cancels on close."""
        assert self.owner is not None
        client_id = self._claim_id(msg)
        job_id, after = msg.get("job_id"), msg.get("after", 0)
        if not isinstance(job_id, str):
            raise bad_request("job_id must be a string", "job_id")
        if not isinstance(after, int) or isinstance(after, bool) \
                or not 0 <= after <= events.MAX_EVENT_ID:
            raise bad_request("after must be an event id: a whole number from 0 to "
                              f"{events.MAX_EVENT_ID}", "after")
        row = load_job(job_id, self.owner.account_id)
        # Resuming a job this socket started (its relay broke off) keeps its promise: the
        # job is cancelled if the socket closes before its end.
        previous = self.jobs.get(client_id)
        cancel_on_close = previous is not None and previous.interrupted \
            and previous.job_id == job_id and previous.cancel_on_close
        self.send({"type": "accepted", "id": client_id, "job_id": job_id})
        self._relay(client_id, job_id, after, cancel_on_close=cancel_on_close,
                    ended=RowFinal(row, self.owner.account_id))

    def _relay(self, client_id: str, job_id: str, after: int, *, cancel_on_close: bool,
               own: bool = False, ended: Ended | None = None) -> Relayed:
        job = Relayed(job_id, cancel_on_close, last=after)
        self.jobs[client_id] = job
        job.greenlet = gevent.spawn(self._pump, client_id, job, after, own, ended)
        return job

    def _pump(self, client_id: str, job: Relayed, after: int, own: bool,
              ended: Ended | None) -> None:
        # The event JSON goes out as published, spliced in without a parse.
        prefix = (f'{{"type":"event","id":{json.dumps(client_id)},'
                  f'"job_id":{json.dumps(job.job_id)},"seq":')
        sent = after
        try:
            try:
                for item in follow(self.relay, self.redis, job.job_id, after, own=own,
                                   ended=ended):
                    if item is not None:
                        seq, data = item
                        # Delivered is finished: a client closing right after the final
                        # event must not cancel a job that already ended.
                        job.finished = job.finished or events.is_final(data)
                        # A final rebuilt from the database has no seq (null).
                        self.send(f'{prefix}{"null" if seq is None else seq},"data":{data}}}')
                        sent = job.last = sent if seq is None else seq
            except redis.RedisError as exc:
                # The relay broke off, not the job: never a final, and no "done".
                log.warning("relay of job %s broken off at %d: %r", job.job_id, sent, exc)
                job.finished = job.interrupted = True
                self.send(reconnect_message(client_id, job.job_id, sent))
                return
            job.finished = True
            self.send({"type": "done", "id": client_id, "job_id": job.job_id})
        except ConnectionClosed:
            return

    def cancel(self, client_id: str) -> None:
        job = self.jobs.get(client_id)
        if job is None:
            raise not_found(f"job with id {client_id!r} on this socket")
        if not job.finished:
            request_cancel(job.job_id)
        self.send({"type": "cancelling", "id": client_id, "job_id": job.job_id})

    def drain(self) -> None:
        """The process is stopping: tell the client where each running job stands, then
        close with "service restart"; it follows them on another process."""
        self.draining = True
        running = []
        # Under the send lock: no relay is stopped halfway through writing a message.
        with self._send_lock:
            for client_id, job in self.jobs.items():
                if job.greenlet is not None:
                    job.greenlet.kill()
                if not job.finished:
                    running.append(reconnect_message(client_id, job.job_id, job.last,
                                                     draining=True))
        try:
            for message in running:
                self.send(message)
            self.ws.close(reason=api_drain.WS_SERVICE_RESTART, message=api_drain.REASON)
        except ConnectionClosed:
            pass

    def close(self) -> None:
        """The client left: stop the relays and cancel what nobody will read (not when
        the process drains: the client follows its jobs on another one)."""
        for job in self.jobs.values():
            if job.greenlet is not None:
                job.greenlet.kill(block=False)
            if not job.finished and job.cancel_on_close and not self.draining:
                on_disconnect(job.job_id)


def reconnect_message(client_id: str, job_id: str, after: int, *,
                      draining: bool = False) -> dict[str, Any]:
    """The socket's form of the SSE ``reconnect`` notice: send ``follow`` with this
    ``after`` (after ``retry_ms``) to resume, on this socket or another (``draining``:
    this server is stopping; its socket closes next, with 1012)."""
    if draining:
        return {"type": "reconnect", "id": client_id, "job_id": job_id, "after": after,
                "retry_ms": events.RECONNECT_RETRY_MS, "reason": api_drain.REASON,
                "message": "this server is stopping, not the job: connect again and send "
                           "follow with this after to resume"}
    return {"type": "reconnect", "id": client_id, "job_id": job_id, "after": after,
            "retry_ms": events.RECONNECT_RETRY_MS,
            "message": "the event stream was interrupted (the event bus is unavailable), "
                       "not the job: send follow with this after to resume"}


def _parse(raw: str | bytes | None) -> dict[str, Any]:
    msg = decode(raw or "", "message")
    if not isinstance(msg, dict):
        raise bad_request("message must be a JSON object")
    return msg


def _client_id(msg: dict[str, Any]) -> str:
    client_id = msg.get("id")
    if not isinstance(client_id, str) or not 0 < len(client_id) <= MAX_CLIENT_ID:
        raise bad_request(f"id must be a string of 1 to {MAX_CLIENT_ID} characters", "id")
    return client_id


def init_app(app: Flask) -> None:
    # Pings keep idle sockets open through proxies and reveal peers that vanished.
    app.config["SOCK_SERVER_OPTIONS"] = {"ping_interval": 25,
                                         "max_message_size": app.config["MAX_CONTENT_LENGTH"]}
    app.register_blueprint(bp)
    sock.init_app(app)
    app.register_error_handler(WebsocketMismatch, _not_upgraded)
    app.register_error_handler(RemoteProtocolError, _bad_handshake)


def _not_upgraded(_exc: WebsocketMismatch) -> Response:
    return bad_request("this endpoint needs a WebSocket upgrade (Upgrade: websocket)").response()


def _bad_handshake(exc: RemoteProtocolError) -> Response:
    # Raised before the socket is taken over, so an HTTP answer can still go out.
    return bad_request(f"not a valid WebSocket upgrade: {exc}").response()


@sock.route("/api/v1/ws", bp=bp)
def websocket(ws: Any) -> None:
    session = SocketSession(ws, current_app.extensions["chorus.relay"],
                      current_app.extensions["chorus.redis"])
    unlisten = api_drain.of(current_app).listen(session.drain)
    try:
        session.run()
    except ApiError as err:
        # Only authentication fails the whole socket; it closes with a policy violation.
        session.send(error_message(None, err))
        ws.close(reason=1008, message=err.message[:120])
    finally:
        unlisten()
        session.close()
