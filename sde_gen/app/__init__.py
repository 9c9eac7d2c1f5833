"""The application around the math: configs, factories, runs, the training loop, evaluation,
export, outputs and the CLI. Nothing outside ``sde_gen.app`` imports it."""
