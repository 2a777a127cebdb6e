import sys

from improve_lib.runs.cli import main

sys.exit(main())
