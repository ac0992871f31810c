"""Several workers on one CHT: the lease that makes one of them active.

See worker/README.md for how the packages fit together."""
