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
    # CDK's built-in CloudFormation validation is off: the templates are linted by cfn-lint, pinned and
    # with the project's documented ignore list (tests/test_nag_and_lint.py, `make lint`), and the
    # built-in validator checks the same rule IDs again in a WebAssembly engine that costs about 3 s of
    # every synth (its start-up, and Node's slow exit after it; bench/synth.py). cdk-nag still fails
    # the synth. The tests and the rehearsal build their apps the same way.
    app = App(builtin_cloud_formation_validation=False)
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
