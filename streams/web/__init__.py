"""The pages of ``caretally serve`` for billing staff and care managers.

Served at ``/`` beside the JSON API, over the same state (the
:class:`~streams.http.state_cache.StateCache` that follows the worker's billing and
alerts topics; the event log for audits and month close): nothing here keeps a second
copy of billing. A page signs in with an org API key and lives on a session cookie
(:mod:`streams.web.sessions`); every form post carries a CSRF token.

Rooms: :mod:`~streams.web.sessions` (who is signed in), :mod:`~streams.web.auth` (the
middleware, sign-in and sign-out), :mod:`~streams.web.worklist` (patient-months in plain
groups, pace to the next threshold), :mod:`~streams.web.words` (flags and reasons in plain
words), :mod:`~streams.web.chart` (minutes by day as SVG), :mod:`~streams.web.log_reads`
(a patient's events from the log), the page handlers in ``*_page`` modules,
:mod:`~streams.web.live` (Server-Sent Events for the open pages), :mod:`~streams.web.site`
(routes and templates). Templates are Jinja2 with autoescaping; the only script is
``static/live.js``, written here; nothing is loaded from the internet.
"""
