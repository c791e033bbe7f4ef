"""The ``traces:`` regression suite: the app's held-out approved trajectories as eval tasks (:mod:`~ee_middleware.evals.traces.suite`)."""
