"""``python -m safefql`` runs the command-line interface."""

from safefql.cli import main

if __name__ == "__main__":
    main()
