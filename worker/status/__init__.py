"""Status tracking: every sent message followed to a final state within RapidPro's budget.

See worker/README.md for how the packages fit together."""
