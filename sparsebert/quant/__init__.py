"""Placeholder: filled in by its feature work this session."""
