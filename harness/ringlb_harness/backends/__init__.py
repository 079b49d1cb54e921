"""Test backends put behind the balancer (not the replica image): raw asyncio servers whose
every byte is under the test's control.

- ``main.MainBackend``: behaviour by path (echo, streams, uploads, WebSocket, a replica dying...)
- ``framing``: ``ByteLogBackend`` (every byte a connection delivered), ``LenientBackend`` (splits
  on bare LF), ``ReuseDropBackend`` (drops a connection's second request)
- ``recording``: ``RecordingBackend`` (every request as h11 read it) and ``RawBackend``
  (misbehaving answers: stray bytes, a 101 nobody asked for, 5,000 header fields, tunnels)
- ``scaler.FakeScaler``: the supervisor's scaling API, pushing membership as ``ringlb dev`` does
- ``process.BackendProcess``: one of them in a process of its own (``python -m ringlb_harness.backends``)

Each runs in a thread of the test process (``.start()``, ``server.ServerThread``). Every backend
answers ``GET /heartbeat`` with 200 so the balancer's health checks keep it in.
"""
