"""idemgate's benchmark suite: every figure next to a baseline measured in the same run.

Run it with ``make bench`` (or ``.venv/bin/python -m bench``); it writes docs/performance.md.
``--quick`` runs every benchmark with tiny counts, to check that the suite still works.
"""
