"""The BFCL harness (``bfcl:CATEGORY[:N]``) and BFCL's official checkers used as a library."""
