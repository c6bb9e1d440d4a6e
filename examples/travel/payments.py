"""The payments API: a plain HTTP service (Starlette on uvicorn) behind Writ's
``Txn-Token`` middleware. For every request the middleware computes the charge it asks
for (scope, amount, category, from the JSON body) and validates the one token the request
carries *with* that action, as this service, before the handler runs: a token not issued
to payments, spent, or not allowing this exact charge never reaches the handler. The API
trusts nothing the caller says about its rights: only what Writ answers for the token.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import writ
from writ.http import Incoming, TxnTokenMiddleware

# Charges above this need the high-privilege scope (and so alice's consent).
LARGE_CHARGE = 500


def scope_for(amount: int) -> str:
    return "payments.charge_large" if amount > LARGE_CHARGE else "payments.charge"


def charge_action(request: Incoming) -> writ.Action:
    """The action a charge request asks for. Checked at Writ before the handler runs; a
    use-limited token (a consent's single-use token) spends its use on it."""
    body = request.json()
    amount, category = int(body["amount"]), str(body["category"])
    return writ.Action(scope_for(amount), amount=amount, category=category)


async def charge(request: Request) -> JSONResponse:
    body = await request.json()
    ctx = writ.require()  # the token, and the charge Writ allowed for it
    assert ctx.action is not None
    return JSONResponse(
        {
            "charged": ctx.action.attributes["amount"],
            "category": ctx.action.attributes["category"],
            "reference": body.get("reference", ""),
            "for": ctx.info.subject,
            "token_id": ctx.info.token_id,  # public: the audit trail names it
        }
    )


def create_app(client: writ.Client) -> TxnTokenMiddleware:
    """The API, wrapped in the middleware that validates every Txn-Token as this service
    (``client`` proves the payments identity) together with the charge the request asks
    for. Refusals are answered by the middleware: 401 (no usable token), 403 (the charge
    is not allowed, or needs alice's consent), 400 (not a charge request)."""
    app = Starlette(routes=[Route("/charges", charge, methods=["POST"])])
    return TxnTokenMiddleware(app, client=client, action=charge_action)
