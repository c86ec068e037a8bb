"""Lockstep node agent: measures GPUs, network and training collectives on one node and serves them."""

__version__ = "0.1.0"
