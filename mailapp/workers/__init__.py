"""
Worker processes sharing the listeners: ``[server] workers = N``.

With N = 1 (the default) the server is one process, as it always was. With
N > 1, ``twistd mailapp`` starts a parent that binds every listener (before
privileges drop), accepts on none, and supervises N worker processes, each
handed every listening socket and accepting on all of them; the kernel
spreads the connections. The parent owns what must have one owner (the
relay queue and its sending, the sweeps of left-overs) and carries what
must cross processes (relay queue entries, folder changes for IDLE, the
log). The store needs nothing: it already locks across processes (SQLite,
file locks).

- L{mailapp.workers.supervisor}: the parent's side (start, restart with
  back-off, ``SIGTERM``/``SIGHUP`` passed on, the hub).
- L{mailapp.workers.child}: one worker (``python -m mailapp.workers.child``).
- L{mailapp.workers.channel}: the lines between them.

What does not cross processes yet is listed in the README (``workers``).
"""
