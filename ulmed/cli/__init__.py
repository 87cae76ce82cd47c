"""The ``ulmed`` command line: thin, one API call per subcommand.

* :mod:`ulmed.cli.app`: the typer app, the global options (:data:`~ulmed.cli.app.state`), output helpers;
* :mod:`ulmed.cli.flags`: values typer cannot read itself (a YAML config, ``KEY=VALUE`` lists);
* :mod:`ulmed.cli.protection`: ``protect``, ``merge-manifests``;
* :mod:`ulmed.cli.inspection`: ``info``, ``methods``;
* :mod:`ulmed.cli.publish`: ``release``, ``verify``;
* :mod:`ulmed.cli.evaluation`: ``evaluate``, ``train-generator``;
* :mod:`ulmed.cli.entry`: :func:`main`, which turns errors into one line and an exit code.
"""

from ulmed.cli.app import app, state
from ulmed.cli.entry import main

__all__ = ["app", "main", "state"]
