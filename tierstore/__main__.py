"""``python -m tierstore``: the ``tierstore`` command, through the console script's entry
(:mod:`tierstore.cli.entry`), whose first steps must come before grpc loads."""

from tierstore.cli.entry import main

if __name__ == "__main__":
    main()
