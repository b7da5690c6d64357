#!/usr/bin/env python3
"""The baseline of `make bench-synth`: a CDK app with one empty stack.

Same Python, venv, aws-cdk-lib and CLI as app.py, so its synth time is the fixed cost every
app pays (starting Python, importing aws_cdk, starting the jsii kernel in Node, the CLI reading
the cloud assembly). Imports only what any CDK app imports, on purpose: importing cdk-nag or
the service modules would hide part of the real app's cost in the baseline.
"""

from aws_cdk import App, Stack

app = App()
Stack(app, "Empty")
app.synth()
