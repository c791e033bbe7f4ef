"""Dataset builders (IL, IWM, SR) and LoRA trainers (peft + trl), importable as ``ee_middleware.trainers``.

This folder is mapped into the ``ee_middleware`` namespace by the build (``setup.py``, which
passes ``package_dir`` to setuptools). Dataset building needs only polars; training needs the
``[train]`` extra, imported lazily.
"""
