"""The ``tierstore`` admin command line (built on the client library only, plus ``serve``)."""
