"""`cdk deploy` for real, to a local AWS emulator (moto's server, patched), then the post-deploy checks.

    python -m tools.local_aws {all,up,deploy,verify,down} ...   (the CLI: tools/local_aws/cli.py)

Kept free of imports: `python -m tools.local_aws.patched_moto` starts the emulator through this
package, and needs none of the CLI's.
"""
