"""Stochastic normalizations as Bayesian learning (registration written by the unified-norms work)."""
