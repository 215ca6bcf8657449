"""``python -m indexer`` = ``facesearch-index``."""

import sys

from indexer.main import main

sys.exit(main())
