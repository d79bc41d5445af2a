"""The built-in plugins of the harness, registered through the same entry points as any other."""
