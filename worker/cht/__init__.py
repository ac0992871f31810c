"""CHT's app settings and translation docs in force, and a standby's re-reading of them.

See worker/README.md for how the packages fit together."""
