"""Forge subsystem."""
