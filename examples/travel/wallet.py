"""Alice's wallet app: it signs alice in on her phone (not shown) and, when she taps
"approve", records her decision at Writ through the back-channel (DecideConsent), as a
party with the approver role and its own certificate. It never holds a token.
"""

from __future__ import annotations

import writ


async def approve_for_alice(wallet: writ.Client, consent_request_id: str) -> writ.ConsentRequestInfo:
    """Alice approved this request in the app: tell Writ, for her (and only for her)."""
    return await wallet.decide_consent(consent_request_id, approve=True, subject="alice")
