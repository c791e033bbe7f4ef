"""Serving adapters: the backend protocol over vLLM's runtime LoRA API, the local server, launchers, the alias router.

Import the modules directly; the local server needs the ``[serve]`` extra, the rest only the core.
"""
