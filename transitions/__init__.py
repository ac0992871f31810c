"""The worker's decisions, pure (no I/O, no clock of their own), in the capability packages of
`worker/`: `cht/` (CHT's task states, timestamps, phone numbers, translations, the settings and
translation watchers), `outgoing/` (which messages are sendable, dispatch, in-doubt matching,
ledger leaves, broadcast keys, what RapidPro stores), `status/` (status tracking's rules, plan,
API use, incremental feed, delivery reports), `rapidpro/` (channels, throttle scopes, the relay
flow and its check), `incoming/` (the CHT record of an incoming SMS, SMS forms), `lease/` and
`commands/` (check's grades). `base.py` says what a transition is."""
