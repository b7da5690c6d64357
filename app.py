#!/usr/bin/env python3
"""Builds one stack per environment in config/*.toml (or `-c env=NAME`).

`-c target=emulator` marks a deploy to the local AWS emulator: features that need a
Lambda-backed custom resource follow the environment's [emulator] settings.
"""

import sys

from aws_cdk import App

from envconfig import ConfigError, load_environments
from stacks import add_environments


def main() -> None:
    app = App()
    requested = app.node.try_get_context("env")
    target = app.node.try_get_context("target") or "aws"
    try:
        if target not in ("aws", "emulator"):
            raise ConfigError([f"context target: got {target!r}; allowed: aws, emulator"])
        configs = load_environments([requested] if requested else None)
    except ConfigError as err:
        # One clear message per problem, no traceback, nothing synthesized.
        print("Config error:\n  " + "\n  ".join(err.problems), file=sys.stderr)
        sys.exit(1)
    add_environments(app, configs, target=target)
    app.synth()


if __name__ == "__main__":
    main()
