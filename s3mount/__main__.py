"""`python -m s3mount` runs the command line."""

from s3mount.cli import main

raise SystemExit(main())
