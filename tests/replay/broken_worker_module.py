"""A module that raises (not an ImportError) as it is imported: named by a test sandbox's ``worker_modules``."""

raise RuntimeError("this module cannot be imported")
