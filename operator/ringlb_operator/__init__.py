"""ringlb operator: turns ``ReplicaSet.ringlb.io`` resources into replica pods and a balancer.

Imported as ``ringlb_operator`` (never ``operator``, which would shadow the standard library).
"""
