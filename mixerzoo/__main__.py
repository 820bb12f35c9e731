import sys

from mixerzoo.cli import main

sys.exit(main())
