"""Small data files shipped with metareward (read with importlib.resources)."""
