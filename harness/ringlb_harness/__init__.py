"""The harness the tests and scripts share: real processes on loopback, load, figures.

- ``net``: free_port, wait_until (the one wait loop), raw socket exchanges
- ``http1``: responses read by a strict client parser (h11), requests built as bytes
- ``proc``: /proc readers (cpu_seconds, rss_bytes, descendants, pids_listening...)
- ``balancer``: the balancer process as its image runs it, and membership pushes
- ``local``: ``ringlb dev`` as a subprocess (LocalMode)
- ``load``: a closed-loop generator (``run_load``, threads) and an open-loop one (``OpenLoad``, asyncio)
- ``stats``: percentiles
- ``prometheus``: sample values from a /metrics text (prometheus_client's parser)
- ``fuzzing``: the request-path fuzz (hypothesis)
- ``backends``: the test backends put behind the balancer (not the replica image)

Installed from a checkout with the project (``pip install -e '.[test]'``); the images do not
ship it.
"""
