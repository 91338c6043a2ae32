"""``python -m hfconv``: the same as the ``hfconv`` console script."""

from .cli import run

if __name__ == "__main__":  # pragma: no cover
    run()
