"""The payments API: a plain HTTP service (Starlette on uvicorn) behind Writ's
``Txn-Token`` middleware. The middleware admits only a request carrying one token
issued to this service and still usable; the handler then checks the exact charge it is asked to make
(scope, amount, category) against that token with Validate. The API trusts nothing the
caller says about its rights: only what Writ answers for the token.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import writ
from writ.http import TxnTokenMiddleware

# Charges above this need the high-privilege scope (and so alice's consent).
LARGE_CHARGE = 500


def scope_for(amount: int) -> str:
    return "payments.charge_large" if amount > LARGE_CHARGE else "payments.charge"


async def charge(request: Request) -> JSONResponse:
    body = await request.json()
    amount, category = int(body["amount"]), str(body["category"])
    try:
        # Spends a use of a use-limited token (a consent's single-use token).
        await writ.check(writ.Action(scope_for(amount), amount=amount, category=category))
    except writ.ConsentRequired as e:
        return JSONResponse(
            {"error": "consent_required", "scope": scope_for(amount), "message": e.message},
            status_code=403,
        )
    except writ.ActionDenied as e:
        return JSONResponse(
            {"error": "denied", "denied_by": e.dimension, "message": e.message}, status_code=403
        )
    except writ.TokenInactive as e:
        return JSONResponse({"error": "invalid_token", "reason": e.inactive_reason}, status_code=401)
    ctx = writ.require()  # the token the check allowed, with what Writ knows of it
    return JSONResponse(
        {
            "charged": amount,
            "category": category,
            "reference": body.get("reference", ""),
            "for": ctx.info.subject,
            "token_id": ctx.info.token_id,  # public: the audit trail names it
        }
    )


def create_app(client: writ.Client) -> TxnTokenMiddleware:
    """The API, wrapped in the middleware that validates every Txn-Token as this service
    (``client`` proves the payments identity). Its one route checks an action before
    anything else, so it may admit tokens that answer only action checks, as the
    single-use token redeemed from alice's consent does."""
    app = Starlette(routes=[Route("/charges", charge, methods=["POST"])])
    return TxnTokenMiddleware(app, client=client, admit_action_only=True)
