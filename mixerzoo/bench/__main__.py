"""``python -m mixerzoo.bench {bench,model-table} ...``"""

import sys

from mixerzoo.bench._cli import main

sys.exit(main())
