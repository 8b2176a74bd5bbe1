import sys

from moe_compile.cli import main

sys.exit(main())
