"""Lockstep controller: compares the ranks of each job, finds the node that breaks the lockstep, acts on it."""

__version__ = "0.1.0"
