"""Amazon Linux 2023 package names, as the servers' Init metadata asks for them, mapped to the
Debian 12 packages the rehearsal root has. One table; every entry says why it maps as it does.

The root has every Debian package installed, but a server sees only what its metadata asks for:
each entry's `provides` (its commands and units) stays hidden until cfn-init installs the
package, as on a fresh Amazon Linux 2023 instance (whose python3, AWS CLI, curl, util-linux and
xfsprogs stay visible). `standin` names what plays a package's part where Debian cannot. scripts/rehearsal-root.sh installs every Debian package named here (a
test checks).
"""

from __future__ import annotations

HIDDEN_SUFFIX = ".rehearsal-not-installed"

PACKAGES: dict[str, dict] = {
    "python3.11": {"debian": ["python3", "python3-venv"],
                   "provides": ["/usr/bin/python3.11"],
                   "reason": "Debian 12's Python is 3.11; on AL2023 `python3` is 3.9 and python3.11 a package"},
    "python3.11-pip": {"debian": ["python3-pip"], "provides": ["/usr/bin/pip3"], "reason": "pip for Python 3.11"},
    "logrotate": {"debian": ["logrotate"], "provides": ["/usr/sbin/logrotate"], "reason": "same package"},
    "nginx": {"debian": ["nginx"],
              "provides": ["/usr/sbin/nginx", "/usr/lib/systemd/system/nginx.service"],
              "reason": "same program (1.22 on Debian); the AL2023 package's nginx user and "
                        "/var/lib/nginx/tmp are recreated in the image"},
    "postgresql15-server": {"debian": ["postgresql-15"],
                            "provides": ["/usr/lib/postgresql/15/bin/postgres", "/usr/lib/postgresql/15/bin/initdb",
                                         "/usr/bin/postgresql-setup",
                                         "/usr/lib/systemd/system/postgresql.service"],
                            "reason": "the same PostgreSQL 15; AL2023's postgresql.service and postgresql-setup "
                                      "are stand-ins over Debian's binaries",
                            "standin": "AL2023 postgresql.service/postgresql-setup"},
    "postgresql15": {"debian": ["postgresql-15"], "provides": ["/usr/bin/psql"],
                     "reason": "the PostgreSQL 15 client, psql (the database setup; the release command's lock and "
                               "record); AL2023's postgresql15-server requires it; Debian's postgresql-client-15 "
                               "comes with postgresql-15, which the root installs"},
    "awscli-2": {"debian": ["awscli"], "provides": [],
                 "reason": "Debian's AWS CLI v2 (2.9), wrapped to call the emulator with dummy keys; "
                           "on the standard AL2023 AMI already"},
    "amazon-cloudwatch-agent": {"debian": [],
                                "provides": ["/opt/aws/amazon-cloudwatch-agent/bin/amazon-cloudwatch-agent-ctl"],
                                "reason": "not in Debian and ships to AWS: a stand-in checks its config",
                                "standin": "CloudWatch agent"},
}

def debian_packages() -> set[str]:
    return {name for entry in PACKAGES.values() for name in entry["debian"]}
