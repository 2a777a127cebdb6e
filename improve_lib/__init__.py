"""IMPROVE study library."""
