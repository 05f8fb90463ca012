"""python -m mta.cli.sendmail: mta-sendmail (the console script is mta.cli.sendmail:main)."""

from mta.cli.sendmail import main

raise SystemExit(main())
