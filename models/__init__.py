"""Flourish models package."""
