import sys

from cocu.cli import main

sys.exit(main())
