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

# Files that are not modules and ship in the wheel: the type-checking marker (PEP 561), the chat templates `ee serve
# --chat-template NAME` names, the tau-style harness's own domain (a JSON database, a policy, tasks).
# tests/test_packaging.py checks that every such file in the package folders is listed here.
package_data = {
    "ee_middleware": ["py.typed"],
    "ee_middleware.adapters.templates": ["*.jinja"],
    "ee_middleware.evals.tau.domains.library": ["*.json", "*.md"],
}

setup(packages=packages, package_dir=package_dir, package_data=package_data)
