"""Flourish privacy package."""
