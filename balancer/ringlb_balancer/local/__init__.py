"""Local mode (``ringlb dev``): the operator's job done with plain processes on loopback."""
