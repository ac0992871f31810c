"""CouchDB as the worker talks to it: the client and its error types, group-commit writes.

See worker/README.md for how the packages fit together."""
