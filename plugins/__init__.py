"""Glue between minitron-deploy and outside stacks; one module per stack (``modelopt`` ...)."""
