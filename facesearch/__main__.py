import sys

from facesearch.cli.main import main

sys.exit(main())
