"""Package discovery for setuptools (everything else is in pyproject.toml).

The top-level folders ``trainers/`` (and, as they arrive, ``adapters/`` and ``evals/``) are
installed as ``ee_middleware.trainers`` and so on, so that no top-level name collides with an
existing PyPI package.
"""

from setuptools import find_packages, setup

MAPPED_FOLDERS = ["trainers", "adapters", "evals"]

packages = find_packages(include=["ee_middleware", "ee_middleware.*"])
package_dir = {}
for folder in MAPPED_FOLDERS:
    package_dir[f"ee_middleware.{folder}"] = folder
    packages.append(f"ee_middleware.{folder}")
    packages += [f"ee_middleware.{folder}.{sub}" for sub in find_packages(where=folder)]

# The tau-style harness's own domain ships as data (a JSON database, a policy, tasks).
package_data = {"ee_middleware.evals.tau.domains.library": ["*.json", "*.md"]}

setup(packages=packages, package_dir=package_dir, package_data=package_data)
