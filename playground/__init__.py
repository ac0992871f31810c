"""Development tools, not part of the daemon (the installed package does not contain them):

- `python -m playground` (what `./scripts/run` starts without a COUCH_URL): the whole job on one
  machine — a CouchDB-protocol server seeded like a CHT, a RapidPro stand-in and the worker;
- `fake_rapidpro.py`: a RapidPro API v2 server written from RapidPro's documentation, with its
  rate limit, errors and faults; the tests and benchmarks use it too;
- `rapidpro_standin.py`: that server playing a RapidPro workspace for a person
  (`python -m playground.rapidpro_standin --help`);
- `couchdb_server/`: the CouchDB-protocol server (Node.js, PouchDB), which the tests start too;
- `cht/`: CHT's design docs and translation docs as the playground seeds them.

The tests import from here; nothing here imports the tests.
"""
