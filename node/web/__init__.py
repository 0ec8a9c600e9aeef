"""The web app: worklist, study view and sign-off, admin triage, monitoring and metrics.

Routes live by area — :mod:`~node.web.auth`, :mod:`~node.web.worklist`,
:mod:`~node.web.study`, :mod:`~node.web.admin`, :mod:`~node.web.metrics` — over the
shared dependencies in :mod:`~node.web.deps`. :func:`create_app` builds the app;
:class:`~node.web.server.WebServer` serves it from a thread of ``radnode serve``.
"""

from node.web.app import create_app

__all__ = ["create_app"]
