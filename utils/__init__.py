"""Utilities shared by every script: losses, training engine, evaluation, checkpoints, logging."""
