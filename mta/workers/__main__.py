"""python -m mta.workers: one worker process (mta.workers.worker), started by the master."""

import sys

from mta.workers.worker import main

sys.exit(main())
