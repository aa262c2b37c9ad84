"""The sans-I/O core: protocol, rules, meeting state, records and tokens.

Nothing in this package imports asyncio, sockets, threads or a database driver;
``tests/test_layering.py`` proves it. Every piece here is driven by values and
returns values, so it is tested without a network and reused by every adapter.
"""

__all__: list[str] = []
