"""Amazon Linux 2023 package names, as the servers' Init metadata asks for them, mapped to the
Debian 12 packages the rehearsal root has. One table; every entry says why it maps as it does.

An empty `debian` list means a stand-in from rehearsal/standins/ plays the package's part.
scripts/rehearsal-root.sh installs every Debian package named here (a test checks).
"""

from __future__ import annotations

PACKAGES: dict[str, dict] = {
    "python3.11": {"debian": ["python3", "python3-venv"],
                   "reason": "Debian 12's python3 is 3.11 (/usr/bin/python3.11); Debian ships venv separately"},
    "python3.11-pip": {"debian": ["python3-pip"], "reason": "pip for Python 3.11"},
    "logrotate": {"debian": ["logrotate"], "reason": "same package"},
    "nginx": {"debian": ["nginx"],
              "reason": "same program (1.22 on Debian, 1.2x on AL2023); the AL2023 package's nginx user and "
                        "/var/lib/nginx/tmp are recreated in the image"},
    "postgresql15-server": {"debian": ["postgresql-15"],
                            "reason": "the same PostgreSQL 15; AL2023's postgresql.service and postgresql-setup "
                                      "are stand-ins over Debian's binaries"},
    "awscli-2": {"debian": ["awscli"],
                 "reason": "Debian's AWS CLI v2 (2.9), wrapped to call the emulator with dummy keys"},
    "amazon-cloudwatch-agent": {"debian": [],
                                "reason": "not in Debian and ships to AWS: a stand-in checks its config"},
}


def debian_packages() -> set[str]:
    return {name for entry in PACKAGES.values() for name in entry["debian"]}
