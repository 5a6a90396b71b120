"""Bridges to other RL engines. Each submodule imports its engine lazily (extras: ``verl``)."""
