"""The health view: the health check's JSON report, 200 when healthy and 503 when not, for staff users and for
requests that carry ``HEALTH_TOKEN``; everyone else gets 403 and no detail."""

from __future__ import annotations

import hmac

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from .conf import health_token
from .health import check

BEARER = 'Bearer '


def _is_staff(request: HttpRequest) -> bool:
    user = getattr(request, 'user', None)  # None in a project without AuthenticationMiddleware
    return bool(user is not None and user.is_authenticated and user.is_active and user.is_staff)


def _has_token(request: HttpRequest) -> bool:
    # Only in the header: a token in the query string would end up in access logs, proxies and browser history.
    token = health_token()
    header = request.headers.get('Authorization', '')
    if token is None or not header.startswith(BEARER):
        return False
    return hmac.compare_digest(header[len(BEARER) :].strip().encode(), token.encode())


@never_cache
@require_GET
def health(request: HttpRequest) -> HttpResponse:
    if not (_has_token(request) or _is_staff(request)):
        return HttpResponse(status=403)
    report = check()
    return JsonResponse(report.as_json(), status=200 if report.healthy else 503)
