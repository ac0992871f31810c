"""RapidPro as the worker talks to it: the API client, its error types, the shared rate budget,
and the credentials (CHT's vault).

See worker/README.md for how the packages fit together."""
