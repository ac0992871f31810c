"""The medic _changes feed: followed, dispatched to the transitions, checkpointed; changes that
keep failing are parked.

See worker/README.md for how the packages fit together."""
