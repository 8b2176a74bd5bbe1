import sys

from moe_compile.cli import run

sys.exit(run())
