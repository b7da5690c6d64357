"""The boot rehearsal: the servers that the synthesized templates describe, booted under real
systemd in throwaway containers (`make rehearse`). See README "The boot rehearsal"."""

import os
from pathlib import Path

# jsii starts Node when aws_cdk is first imported: use the project's pinned Node 22 (no banner).
os.environ["PATH"] = f"{Path(__file__).resolve().parent.parent / 'node_modules' / '.bin'}{os.pathsep}" \
                     f"{os.environ.get('PATH', '')}"
