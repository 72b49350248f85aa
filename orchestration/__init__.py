"""Flourish orchestration package."""
