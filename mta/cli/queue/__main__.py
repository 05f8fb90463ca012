"""python -m mta.cli.queue: mta-queue."""

from mta.cli.queue import main

raise SystemExit(main())
