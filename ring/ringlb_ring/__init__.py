"""ringlb's shared contract: replica names, the membership document, the hashing strategies.

One package that imports nothing of the balancer or the operator, so both agree by construction.
"""
