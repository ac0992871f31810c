"""Sending, exactly once: the sender transition, the dispatch ledger, task writes, in-doubt
resolution, the pending sweep.

See worker/README.md for how the packages fit together."""
