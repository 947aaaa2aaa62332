"""``tailcast evaluate``'s harness (docs/design.md §5): the compared ``systems`` and their item ``window``, the
offline ``harness``, ``live`` and leave-one-out (``loo``) modes, and the ``report``; the command is
:mod:`streams.evaluate`.
"""
