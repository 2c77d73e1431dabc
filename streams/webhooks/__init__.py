"""Signed webhooks out: alerts of ``care.alerts.v1`` POSTed to the receivers each org
registered (``caretally webhooks``; docs/webhooks.md)."""
