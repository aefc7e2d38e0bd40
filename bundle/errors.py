"""The error to report from a chain of exceptions.

MONAI re-raises a failing component's error inside its own (``RuntimeError: applying transform ...``); the error
that names the file and the problem is the first one raised, at the end of the ``__cause__`` / ``__context__`` chain.
Used by ``python -m bundle``, the MONAI Deploy example app and :class:`bundle.transforms.LoadImageWithFileErrorsd`.
"""

from __future__ import annotations


def innermost(error: BaseException) -> BaseException:
    """The last error of the ``__cause__`` / ``__context__`` chain: the one first raised (a context hidden by
    ``raise ... from None`` is not followed, as Python's own traceback does not show it)."""
    seen = {id(error)}
    while True:
        following = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
        if following is None or id(following) in seen:
            return error
        seen.add(id(following))
        error = following
