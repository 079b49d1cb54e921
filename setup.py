"""Build hook: compile the proxy's per-request modules with mypyc when RINGLB_COMPILE=1.

Metadata lives in pyproject.toml; this file only adds the extension modules. The modules stay
plain, type-hinted Python that runs uncompiled (``pip install .`` without a C compiler); compiled,
the same code runs with native classes and direct calls, which measured about a third less CPU
per proxied request (docs/benchmarks.md). The balancer image and ``make compile`` set the flag.
"""

import os

from setuptools import setup

# The per-request path: every module a proxied request runs through, compiled as one group so
# that calls between them are direct C calls. The rest of the balancer stays interpreted.
HOT_MODULES = [
    "balancer/ringlb_balancer/client.py",
    "balancer/ringlb_balancer/exchange.py",
    "balancer/ringlb_balancer/upstream.py",
    "balancer/ringlb_balancer/framing.py",
    "balancer/ringlb_balancer/engine.py",
    "balancer/ringlb_balancer/counters.py",
    "balancer/ringlb_balancer/states.py",
    "balancer/ringlb_balancer/flow.py",
    "balancer/ringlb_balancer/tunnel.py",
]

ext_modules = []
if os.environ.get("RINGLB_COMPILE") == "1":
    from mypyc.build import mypycify

    ext_modules = mypycify(HOT_MODULES, opt_level="3", group_name="ringlb_balancer.proxy")

setup(ext_modules=ext_modules)
