"""The tau-bench-style harness: ``tau:DOMAIN[:SPLIT][:N]``.

A domain is tools over a JSON database, a policy text and tasks with ground-truth actions and
required outputs (:mod:`~ee_middleware.evals.tau.domain`). One small domain ships here
(``library``); a user's own tau-bench checkout adds its ``retail`` and ``airline`` domains
(:mod:`~ee_middleware.evals.tau.tau_bench`). Scoring: :mod:`~ee_middleware.evals.tau.suite`.
"""
