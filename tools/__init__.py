"""Developer tools that run the CDK app outside a real AWS account (the local AWS emulator)."""
