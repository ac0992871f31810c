"""The daemon: one package per capability; worker/README.md is the map."""
