"""Developer tools that read or deploy the CDK app outside a real AWS account.

Three packages, one template reader:
    tools.templates   the synthesized templates read back (load, stale check + re-synth, lookups)
    tools.local_aws   `cdk deploy` to a local AWS emulator (`python -m tools.local_aws ...`)
    tools.checks      the post-deploy checks through the AWS API, and the HTTP smoke test
    tools.reports     the cost estimate and the architecture diagrams
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
