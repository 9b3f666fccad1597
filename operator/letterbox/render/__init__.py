"""Pure functions from API objects (and generated material) to desired state.

No I/O, never async."""
