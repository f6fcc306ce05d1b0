"""CLI subcommands: one module each, every module exposes ``register(subparsers)``.

``register`` adds its parser and sets ``func`` (called with the parsed args). Add a new
subcommand by writing a module here and listing it in ``COMMAND_MODULES``.
"""

COMMAND_MODULES = ["prune", "score", "search", "demo", "distill", "eval", "bench", "export",
                   "quantize", "build_engine", "compress", "serve"]
