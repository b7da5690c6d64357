"""The post-deploy checks: a deployed stack read back through the AWS API (in the emulator or a
real account), and the HTTP smoke test of a real deploy's `Url` output."""
