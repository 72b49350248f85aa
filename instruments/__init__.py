"""Flourish instruments package."""
