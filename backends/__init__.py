"""Backends: numpy (the reference), torch and keras, discovered through entry points."""
