"""A fault campaign against election2's etcd and Redis mechanisms.

Five candidate processes (:mod:`chaos.candidate`) compete for a handful of
resources and do guarded work through a fenced store (:mod:`chaos.store`),
each reaching the servers through fault proxies of its own, while a seeded
nemesis (:mod:`chaos.campaign`) kills, pauses, partitions, silences and slows
candidates and servers for a bounded time. Everything runs on loopback and is
stopped at the end; then :func:`election2.testing.check_history` checks what
the candidates recorded and :mod:`chaos.report` prints the numbers.

Run it with ``python -m chaos --backend etcd|redis|both --seed N --duration 60``
(or ``nox -s chaos -- SEED``).
"""
