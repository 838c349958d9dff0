"""The framework-free, I/O-free core.

Everything here is plain functions, small state objects and *flows*: generators that yield
I/O requests (:mod:`.io`) and receive their results. The ASGI and WSGI edges
(:mod:`clerk_tinybird_middleware._edges`) drive the same flows, one with ``await``, one with
blocking calls, so a rule is written once.
"""
