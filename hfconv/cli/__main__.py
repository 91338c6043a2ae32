"""``python -m hfconv.cli``: the same as the ``hfconv`` console script."""

from . import run

if __name__ == "__main__":  # pragma: no cover
    run()
