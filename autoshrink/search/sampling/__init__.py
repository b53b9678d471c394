"""Samplers: the front sampler and the Optuna samplers a search can use."""
