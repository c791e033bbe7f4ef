"""A database-backed customer-support domain: a retail agent on SQLite, its replay sandbox, and a demo.

- :mod:`retail_db.data`: the schema and seeded rows (users with e-mails and phone numbers, products, orders);
- :mod:`retail_db.tools`: the tools, written once over a ``sqlite3.Connection``;
- :mod:`retail_db.agent`: the LangGraph agent with a scripted expert model, recorded with ``record_experience``;
- :mod:`retail_db.sandbox`: ``make_sandbox``, the factory ``ee replay run --sandbox retail_db.sandbox:make_sandbox`` builds;
- ``python -m retail_db`` (from ``examples/``): record, replay and show, end to end.

docs/sandboxes.md walks through it.
"""
