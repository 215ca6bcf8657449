"""``python -m server``: the same as ``facesearch-server``."""

import sys

from server.app import main

sys.exit(main())
