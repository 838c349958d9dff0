"""The framework-free, I/O-free core.

Everything here is plain functions, small state objects and *flows*: generators that yield
operations (:mod:`.ops`) and receive their results. The drivers
(:mod:`clerk_tinybird_middleware.drivers`) run the same flows, one with ``await``, one with
blocking calls, so a rule is written once.
"""
