"""The two HTTP doors (the operator's and the public webhook-only one), health, metrics and the
operator's requests.

See worker/README.md for how the packages fit together."""
