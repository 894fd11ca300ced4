"""``python -m repsuite`` runs the same CLI as the ``repsuite`` console script."""

from repsuite.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
