"""Packaging beyond setup.cfg: ship the built-in rule sets inside the package.

The rule sets stay at the repository root (``rules/*.yaml``, where users read and edit them) and are
mapped to ``qdq_optimizer/rules`` in the wheel, where ``qdq_optimizer.ruleset`` finds them after a
plain ``pip install``. Everything else is declared in setup.cfg.
"""

from setuptools import find_packages, setup

setup(
    packages=[
        *find_packages(include=["qdq_optimizer", "qdq_optimizer.*", "trainer", "trainer.*"]),
        "qdq_optimizer.rules",
    ],
    package_dir={"qdq_optimizer.rules": "rules"},
    package_data={"qdq_optimizer.rules": ["*.yaml"]},
)
