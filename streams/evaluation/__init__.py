"""``tailcast evaluate``'s harness (docs/design.md §5); the command is :mod:`streams.evaluate`."""
