"""The shared kit of the built-in plugins, open to third-party plugins alike: what several norms
or tasks need and none should copy (shared parameter fields, per-channel helpers, atomic writes
of generated data, classification metric sums). Modules that need torch import it themselves;
this package imports nothing."""
