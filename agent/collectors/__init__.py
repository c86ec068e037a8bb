"""Collector table: every collector the agent knows, by name, with whether it is on by default.

Each entry names the module and class so that a collector whose dependencies are missing never breaks the
others' import. A collector class is built with `cls.from_settings(settings)` (see agent/settings.py).
"""
