"""The command line: the parser (:mod:`.parser`) and the commands (:mod:`.commands`), which
parse, call the library and print."""

from .parser import build_parser, main  # noqa: F401
