"""The review page: Starlette routes under ``/review``, mounted into the ingest application.

Pages (server-rendered with Jinja2, a little JavaScript for the keyboard and in-place updates):

- ``GET /review/`` — the grid of samples with filters (device, camera, predicted label, policy,
  score range, dates, review status), grouped by similarity, near-duplicates of reviewed samples
  marked; ``GET /review/sample/<device>/<date>/<id>`` — one sample: its sidecar, its decision
  history and, with a run (``serve --run``), where the model looked (Grad-CAM);
- ``GET|POST /review/login``, ``POST /review/logout``;
- ``POST /review/decide`` — the form behind the grid's buttons (works without JavaScript).

JSON API (same session cookie; state changes need the ``X-CSRF-Token`` header):

- ``GET /review/api/samples?<filters>`` — the samples of the grid, with groups and marks;
- ``POST /review/api/decisions`` — ``{"keys": ["device/date/id", ...], "action": "accept" |
  "relabel" | "reject" | "reopen", "label": "..." (relabel)}`` -> the decisions recorded.

Images: ``GET /review/image/<device>/<date>/<id>.jpg`` and ``GET /review/explain/<device>/
<date>/<id>.png``. Every route needs a session; every value from a request is checked
(:class:`~training.ingest.store.SampleRef`, :func:`~training.review.labels.check_label`) before
it reaches the store or the database.
"""

from __future__ import annotations

import hmac
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from training.imageio import ImageDecodeError
from training.ingest.errors import SampleNotFound, StoreError
from training.ingest.store import SampleRef, Store, check_date
from training.review import auth
from training.review.db import (
    STATUSES,
    Filters,
    ReviewDB,
    SampleRow,
    Session,
    UnknownSample,
    key_of,
)
from training.review.groups import assign_groups, mark_near_duplicates, near_candidates
from training.review.index import Indexer
from training.review.labels import check_label
from training.review.users import ReviewerRegistry

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
PAGE_SIZE = 120
MAX_KEYS = 1000
MAX_FORM_BYTES = 256 << 10
INDEX_MAX_AGE_S = 3.0
MAX_NEAR_CANDIDATES = 2000  # reviewed samples whose thumbnails one page compares
DECIDE_ACTIONS = ("accept", "relabel", "reject", "reopen")
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'self'; "
    "script-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class BadInput(ValueError):
    """A filter or form value the page refuses (400)."""


@dataclass
class Review:
    """What the review routes share."""

    store: Store
    db: ReviewDB
    reviewers: ReviewerRegistry
    model: Any = None  # training.review.explain.RunModel
    index_interval_s: float = 10.0
    throttle: auth.LoginThrottle = field(default_factory=auth.LoginThrottle)
    indexer: Indexer = field(init=False)

    def __post_init__(self) -> None:
        self.indexer = Indexer(self.store, self.db, self.model, self.index_interval_s)
        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        env.filters["score"] = lambda v: "–" if v is None else f"{v:.2f}"
        self.templates = Jinja2Templates(env=env)

    def start(self) -> None:
        self.indexer.start()

    def stop(self) -> None:
        self.indexer.stop()
        self.db.close()

    def labels(self) -> list[str]:
        labels = set(self.db.known_labels())
        if self.model is not None:
            labels.update(self.model.labels)
        return sorted(labels)

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/review", _to_grid, methods=["GET"]),
            Route("/review/", grid, methods=["GET"]),
            Route("/review/login", login_page, methods=["GET"]),
            Route("/review/login", login, methods=["POST"]),
            Route("/review/logout", logout, methods=["POST"]),
            Route("/review/decide", decide_form, methods=["POST"]),
            Route("/review/api/samples", api_samples, methods=["GET"]),
            Route("/review/api/decisions", api_decisions, methods=["POST"]),
            Route("/review/image/{device}/{date}/{sample_id}.jpg", image, methods=["GET"]),
            Route("/review/explain/{device}/{date}/{sample_id}.png", explain, methods=["GET"]),
            Route("/review/sample/{device}/{date}/{sample_id}", sample_page, methods=["GET"]),
            Mount("/review/static", StaticFiles(directory=HERE / "static"), name="review-static"),
        ]


def _review(request: Request) -> Review:
    return request.app.state.review


def _secure(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def _json_error(status: int, error: str, fix: str) -> Response:
    return _secure(JSONResponse({"error": error, "fix": fix}, status_code=status))


def _page_refusal(request: Request, failure: auth.AuthFailure) -> Response:
    if failure.status == 401 and not request.headers.get("authorization"):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return _secure(
            RedirectResponse(f"/review/login?{urlencode({'next': target})}", status_code=303)
        )
    return _json_error(failure.status, failure.error, failure.fix)


def _require(request: Request) -> Session:
    auth.refuse_bearer(request)
    session = auth.session_of(request, _review(request).db)
    if session is None or not _review(request).reviewers.exists(session.reviewer):
        raise auth.AuthFailure(
            401, "not logged in (no session, or it expired)", "log in at /review/login"
        )
    return session


def _safe_next(value: str | None) -> str:
    """Where to go after login: a path of the review page, never another site."""
    if value and value.startswith("/review/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/review/"


# -- filters --------------------------------------------------------------------------------
def _text(params: Any, name: str) -> str:
    value = (params.get(name) or "").strip()
    if len(value) > 200:
        raise BadInput(f"{name} is too long")
    return value


def _score(params: Any, name: str) -> float | None:
    raw = (params.get(name) or "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise BadInput(f"{name} must be a number from 0 to 1") from None
    if not 0 <= value <= 1:
        raise BadInput(f"{name} must be from 0 to 1")
    return value


def _date(params: Any, name: str) -> str:
    raw = _text(params, name)
    if raw:
        try:
            check_date(raw)
        except ValueError as exc:
            raise BadInput(f"{name}: {exc}") from None
    return raw


def parse_filters(params: Any) -> Filters:
    status = _text(params, "status") or "pending"
    if status not in (*STATUSES, "reviewed", "all"):
        raise BadInput(f"status must be one of {', '.join((*STATUSES, 'reviewed', 'all'))}")
    return Filters(
        device=_text(params, "device"),
        camera=_text(params, "camera"),
        label=_text(params, "label"),
        policy=_text(params, "policy"),
        score_min=_score(params, "score_min"),
        score_max=_score(params, "score_max"),
        date_from=_date(params, "date_from"),
        date_to=_date(params, "date_to"),
        status=status,
    )


def _page_number(params: Any) -> int:
    raw = params.get("page") or "1"
    if not raw.isdigit() or not 1 <= int(raw) <= 100_000:
        raise BadInput("page must be a whole number from 1")
    return int(raw)


def _mark_near(review: Review, rows: list[SampleRow]) -> None:
    """Near-duplicate marks: pHashes of every accepted sample first, thumbnails of the few
    within reach only."""
    keys, phashes = review.db.accepted_phashes()
    wanted = near_candidates(rows, keys, phashes)[:MAX_NEAR_CANDIDATES]
    if wanted:
        reviewed, _ = review.db.query(
            Filters(status="all"), limit=len(wanted), keys=wanted, features=True
        )
        mark_near_duplicates(rows, reviewed)


@dataclass
class GridData:
    rows: list[SampleRow]
    total: int
    grouped_by: str
    groups: list[list[SampleRow]]
    singles: list[SampleRow]


def _grid_data(review: Review, filters: Filters, page: int) -> GridData:
    review.indexer.sync(INDEX_MAX_AGE_S)
    rows, total = review.db.query(
        filters, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE, features=True
    )
    grouped_by = assign_groups(rows)
    _mark_near(review, rows)
    groups: dict[str, list[SampleRow]] = {}
    singles = []
    for r in rows:
        if r.group:
            groups.setdefault(r.group, []).append(r)
        else:
            singles.append(r)
    return GridData(rows, total, grouped_by, list(groups.values()), singles)


# -- pages ----------------------------------------------------------------------------------
async def _to_grid(request: Request) -> Response:
    return RedirectResponse("/review/", status_code=308)


async def grid(request: Request) -> Response:
    review = _review(request)
    try:
        session = _require(request)
        filters = parse_filters(request.query_params)
        page = _page_number(request.query_params)
    except auth.AuthFailure as failure:
        return _page_refusal(request, failure)
    except BadInput as exc:
        return _json_error(400, str(exc), "fix the filter values")
    data = await run_in_threadpool(_grid_data, review, filters, page)
    facets = await run_in_threadpool(review.db.facets)
    query = {k: v for k, v in request.query_params.items() if k != "page" and v}
    return _secure(
        review.templates.TemplateResponse(
            request,
            "grid.html",
            {
                "reviewer": session.reviewer,
                "csrf": session.csrf,
                "filters": filters,
                "facets": facets,
                "statuses": (*STATUSES, "reviewed", "all"),
                "labels": await run_in_threadpool(review.labels),
                "data": data,
                "page": page,
                "pages": max(1, -(-data.total // PAGE_SIZE)),
                "query": urlencode(query),
                "back": str(request.url.path)
                + (f"?{request.url.query}" if request.url.query else ""),
                "explain": review.model is not None,
            },
        )
    )


async def login_page(request: Request, error: str = "", status: int = 200) -> Response:
    review = _review(request)
    token = auth.new_login_token()
    response = review.templates.TemplateResponse(
        request,
        "login.html",
        {
            "token": token,
            "next": _safe_next(request.query_params.get("next")),
            "error": error,
            "no_reviewers": len(review.reviewers) == 0,
            "reviewers_file": str(review.reviewers.path),
        },
        status_code=status,
    )
    auth.set_cookie(response, request, auth.LOGIN_COOKIE, token, max_age=3600)
    return _secure(response)


async def login(request: Request) -> Response:
    review = _review(request)
    try:
        auth.refuse_bearer(request)
        auth.check_origin(request)
    except auth.AuthFailure as failure:
        return _json_error(failure.status, failure.error, failure.fix)
    form = await _form(request)
    if form is None:
        return _json_error(413, "the form is too large", "send the login form only")
    token = request.cookies.get(auth.LOGIN_COOKIE, "")
    sent = str(form.get(auth.CSRF_FIELD) or "")
    if not token or not sent or not hmac.compare_digest(token.encode(), sent.encode()):
        return await login_page(request, "The login form expired: try again.", 403)
    name = str(form.get("name") or "").strip()[:100]
    password = str(form.get("password") or "")
    client = f"ip:{request.client.host if request.client else '?'}"
    wait = review.throttle.wait_s(f"name:{name}", client)
    if wait > 0:
        return await login_page(
            request, f"Too many failed logins: try again in {int(wait) + 1} s.", 429
        )
    ok = await run_in_threadpool(review.reviewers.verify, name, password)
    if not ok:
        review.throttle.failed(f"name:{name}", client)
        log.warning("review login failed for %r from %s", name, client[3:])
        return await login_page(request, "Wrong name or password.", 401)
    review.throttle.succeeded(f"name:{name}")
    sid, _ = await run_in_threadpool(review.db.create_session, name, auth.TTL_S)
    log.info("reviewer %s logged in from %s", name, client[3:])
    response = RedirectResponse(_safe_next(str(form.get("next") or "")), status_code=303)
    auth.set_cookie(response, request, auth.COOKIE, sid, max_age=auth.TTL_S)
    auth.clear_cookie(response, request, auth.LOGIN_COOKIE)
    return _secure(response)


async def logout(request: Request) -> Response:
    try:
        session = _require(request)
        auth.check_origin(request)
        form = await _form(request)
        auth.check_csrf(session, str(form.get(auth.CSRF_FIELD) or "") if form else None)
    except auth.AuthFailure as failure:
        return _json_error(failure.status, failure.error, failure.fix)
    _review(request).db.end_session(request.cookies.get(auth.COOKIE, ""))
    response = RedirectResponse("/review/login", status_code=303)
    auth.clear_cookie(response, request, auth.COOKIE)
    return _secure(response)


async def _form(request: Request) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_FORM_BYTES):
        return None
    return await request.form(max_files=0, max_fields=MAX_KEYS + 10, max_part_size=64 << 10)


def _ref(request: Request) -> SampleRef:
    p = request.path_params
    try:
        return SampleRef(p["device"], p["date"], p["sample_id"])
    except ValueError as exc:
        raise BadInput(str(exc)) from None


async def sample_page(request: Request) -> Response:
    review = _review(request)
    try:
        session = _require(request)
        ref = _ref(request)
    except auth.AuthFailure as failure:
        return _page_refusal(request, failure)
    except BadInput as exc:
        return _json_error(400, str(exc), "use the links of the review page")
    await run_in_threadpool(review.indexer.sync, INDEX_MAX_AGE_S)
    row = await run_in_threadpool(review.db.row, key_of(ref))
    if row is None:
        return _json_error(404, f"no sample {key_of(ref)}", "go back to /review/")
    await run_in_threadpool(_mark_near, review, [row])
    return _secure(
        review.templates.TemplateResponse(
            request,
            "sample.html",
            {
                "reviewer": session.reviewer,
                "csrf": session.csrf,
                "row": row,
                "history": await run_in_threadpool(review.db.history, row.key),
                "labels": await run_in_threadpool(review.labels),
                "explain": review.model is not None,
                "run": review.model.ident if review.model is not None else None,
                "back": "/review/",
            },
        )
    )


async def image(request: Request) -> Response:
    review = _review(request)
    try:
        _require(request)
        ref = _ref(request)
        data = await run_in_threadpool(review.store.read_image, ref)
    except auth.AuthFailure as failure:
        return _json_error(failure.status, failure.error, failure.fix)
    except BadInput as exc:
        return _json_error(400, str(exc), "use the links of the review page")
    except SampleNotFound:
        return _json_error(404, "no such sample image", "it may have been purged")
    except StoreError:
        return _json_error(503, "the inbox cannot be read", "see the server's log")
    response = Response(data, media_type="image/jpeg")
    _secure(response)
    response.headers["Cache-Control"] = "private, max-age=3600"
    return response


async def explain(request: Request) -> Response:
    review = _review(request)
    try:
        _require(request)
        ref = _ref(request)
    except auth.AuthFailure as failure:
        return _json_error(failure.status, failure.error, failure.fix)
    except BadInput as exc:
        return _json_error(400, str(exc), "use the links of the review page")
    if review.model is None:
        return _json_error(
            409,
            "no model to explain with",
            "start the server with --run runs/<name> (the Keras run that made the bundle)",
        )
    label = request.query_params.get("label") or None
    try:
        data = await run_in_threadpool(review.store.read_image, ref)
        result = await run_in_threadpool(review.model.explain, data, label)
    except SampleNotFound:
        return _json_error(404, "no such sample image", "it may have been purged")
    except ImageDecodeError as exc:
        return _json_error(422, f"the image cannot be explained: {exc}", "look at the JPEG itself")
    response = Response(result.png, media_type="image/png")
    _secure(response)
    response.headers["X-Explained-Label"] = result.label.encode("ascii", "replace").decode()
    response.headers["X-Explained-Score"] = f"{result.score:.4f}"
    return response


# -- decisions ------------------------------------------------------------------------------
def _decision_input(keys: Any, action: Any, label: Any) -> tuple[list[str], str, str | None]:
    if action not in DECIDE_ACTIONS:
        raise BadInput(f"action must be one of {', '.join(DECIDE_ACTIONS)}")
    if not isinstance(keys, list) or not keys or len(keys) > MAX_KEYS:
        raise BadInput(f"keys must be a list of 1 to {MAX_KEYS} sample keys")
    checked = []
    for key in keys:
        parts = key.split("/") if isinstance(key, str) else []
        try:
            checked.append(key_of(SampleRef(*parts)) if len(parts) == 3 else None)
        except ValueError as exc:
            raise BadInput(f"bad sample key: {exc}") from None
        if checked[-1] is None:
            raise BadInput("a sample key is device/date/sample_id")
    if action == "relabel" or label:
        try:
            label = check_label(label)
        except ValueError as exc:
            raise BadInput(str(exc)) from None
    else:
        label = None
    if action == "relabel" and not label:
        raise BadInput("relabel needs a label")
    return list(dict.fromkeys(checked)), action, label


def _apply(
    review: Review, reviewer: str, keys: list[str], action: str, label: str | None, via: str
):
    decisions = review.db.decide(keys, action, reviewer, label, via=via)
    log.info(
        "%s: %s %d sample(s)%s",
        reviewer,
        action,
        len(decisions),
        f" as {label!r}" if label else "",
    )
    return decisions


async def api_decisions(request: Request) -> Response:
    review = _review(request)
    try:
        session = _require(request)
        auth.check_origin(request)
        auth.check_csrf(session, request.headers.get(auth.CSRF_HEADER))
    except auth.AuthFailure as failure:
        return _json_error(failure.status, failure.error, failure.fix)
    if not request.headers.get("content-type", "").startswith("application/json"):
        return _json_error(415, "send JSON", "Content-Type: application/json")
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return _json_error(413, "the request is too large", f"at most {MAX_KEYS} keys at once")
    try:
        data = json.loads(body)
        if not isinstance(data, dict):
            raise BadInput("the body must be a JSON object")
        keys, action, label = _decision_input(
            data.get("keys"), data.get("action"), data.get("label")
        )
        via = str(data.get("via") or "api")[:20]
        decisions = await run_in_threadpool(
            _apply, review, session.reviewer, keys, action, label, via
        )
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _json_error(400, "the body is not JSON", "send a JSON object")
    except BadInput as exc:
        return _json_error(400, str(exc), "see the API in docs/field-loop.md")
    except UnknownSample as exc:
        return _json_error(404, str(exc), "reload the page")
    except ValueError as exc:  # e.g. accepting a sample without a guess
        return _json_error(400, str(exc), "relabel it instead")
    return _secure(
        JSONResponse(
            {
                "decisions": [
                    {
                        "key": d.key,
                        "action": d.action,
                        "label": d.label,
                        "reviewer": d.reviewer,
                        "decided_at": d.decided_at,
                    }
                    for d in decisions
                ]
            }
        )
    )


async def decide_form(request: Request) -> Response:
    review = _review(request)
    try:
        session = _require(request)
        auth.check_origin(request)
        form = await _form(request)
        if form is None:
            return _json_error(413, "the form is too large", f"at most {MAX_KEYS} samples at once")
        auth.check_csrf(session, str(form.get(auth.CSRF_FIELD) or ""))
        keys, action, label = _decision_input(
            form.getlist("key"), form.get("action"), form.get("label") or None
        )
        await run_in_threadpool(
            _apply,
            review,
            session.reviewer,
            keys,
            action,
            label,
            str(form.get("via") or "page")[:20],
        )
    except auth.AuthFailure as failure:
        return _json_error(failure.status, failure.error, failure.fix)
    except BadInput as exc:
        return _json_error(400, str(exc), "go back and choose samples and an action")
    except UnknownSample as exc:
        return _json_error(404, str(exc), "reload the page")
    except ValueError as exc:
        return _json_error(400, str(exc), "relabel it instead")
    return _secure(RedirectResponse(_safe_next(str(form.get("back") or "")), status_code=303))


async def api_samples(request: Request) -> Response:
    review = _review(request)
    try:
        _require(request)
        filters = parse_filters(request.query_params)
        page = _page_number(request.query_params)
    except auth.AuthFailure as failure:
        return _json_error(failure.status, failure.error, failure.fix)
    except BadInput as exc:
        return _json_error(400, str(exc), "fix the filter values")
    data = await run_in_threadpool(_grid_data, review, filters, page)
    return _secure(
        JSONResponse(
            {
                "total": data.total,
                "page": page,
                "grouped_by": data.grouped_by,
                "samples": [r.to_json() for r in data.rows],
            }
        )
    )


def create_review(
    store: Store,
    inbox: str,
    reviewers_file: Path,
    review_db: Path | None = None,
    run: Path | None = None,
    index_interval_s: float = 10.0,
) -> Review:
    """The review page of ``inbox``: its database (``INBOX/review.sqlite`` or ``review_db``),
    the reviewers file, and the run's model when given (embeddings and Grad-CAM)."""
    from training.review.db import db_path_for

    model = None
    if run is not None:
        from training.review.explain import RunModel

        model = RunModel(run)
    db = ReviewDB(db_path_for(inbox, review_db))
    registry = ReviewerRegistry(reviewers_file)
    if not len(registry):
        log.warning(
            "no reviewers in %s: nobody can log in to the review page until "
            "`edgecam-train reviewer add NAME --reviewers %s`",
            reviewers_file,
            reviewers_file,
        )
    log.info(
        "review page on /review/: database %s, reviewers %s%s",
        db.path,
        reviewers_file,
        f", model {model.ident}" if model else " (no --run: no Grad-CAM, thumbnail groups)",
    )
    return Review(store, db, registry, model, index_interval_s)
