"""Flourish dashboards package."""
