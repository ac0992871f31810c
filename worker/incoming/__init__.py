"""Incoming SMS: RapidPro's flow webhook, and the reconciliation that fetches what it missed.

See worker/README.md for how the packages fit together."""
