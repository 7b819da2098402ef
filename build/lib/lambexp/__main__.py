"""``python -m lambexp`` (and so ``torchrun -m lambexp``) runs the CLI."""

from lambexp.cli import app

app(prog_name="lambexp")
