"""Adapters for real third-party environments (ALFWorld, ScienceWorld, TextWorld, WebShop).

Each adapter is imported lazily by the registry (``empg.envs.make("alfworld-v0")``) so that importing ``empg.envs``
never needs the optional packages; install them with ``pip install 'empg[real-envs]'``.
"""
