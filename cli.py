#!/usr/bin/env python3
"""The `mesh` command, runnable from a checkout: ``python cli.py node --role edge``.

It hands over to the installed CLI (``mesh.cli``, what ``.venv/bin/mesh`` runs), so both behave the
same. This file is not installed: a top-level module named ``cli`` in site-packages would collide
with any other distribution that ships one. Run it with the project's interpreter
(``.venv/bin/python cli.py ...``) after ``scripts/setup``.
"""
import os
import sys

if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    # The checkout's folders must not shadow the installed packages (``codecs/`` is also the name
    # of a standard-library module): import the installed CLI, not the folder beside this file.
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    try:
        from mesh.cli import main
    except ImportError:
        sys.exit("mesh is not installed for this Python; run scripts/setup, then "
                 f"{os.path.join(here, '.venv', 'bin', 'python')} cli.py ...")
    sys.exit(main(prog_name="mesh"))
