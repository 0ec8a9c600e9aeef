"""Phrase tables of the report labeler, kept as data (TOML) next to this module."""
