"""Backends: objects that run a loaded Model on a feed of named arrays.

A backend exposes `run(feeds: dict, output_names: list) -> list` and
`describe() -> str`; the session checks feeds before handing them over.
"""
