"""Thin entry point so ``python cli.py ...`` works from a checkout."""

from sde_gen.app.cli import main

if __name__ == "__main__":
    main()
