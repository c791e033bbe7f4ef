"""Dataset builders (IL, IWM, SR) and LoRA trainers (peft + trl), importable as ``ee_middleware.trainers``.

This folder is mapped into the ``ee_middleware`` namespace by the build (``pyproject.toml``,
``[tool.setuptools.package-dir]``). Dataset building needs only polars; training needs the
``[train]`` extra, imported lazily.
"""
