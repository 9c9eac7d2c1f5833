"""Thin entry point so ``python cli.py ...`` works from a checkout."""

from sde_gen.cli import main

if __name__ == "__main__":
    main()
