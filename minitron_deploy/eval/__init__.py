"""Evaluation: multiple-choice tasks scored by log-likelihood."""
