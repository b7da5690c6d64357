"""Stage 4: stage 3, with N app processes per server behind an in-server nginx."""

from __future__ import annotations

from cdk_constructs.stages.load_balanced import LoadBalanced


class MultiProcess(LoadBalanced):
    """The same ALB, group and database as stage 3 (same construct IDs, so moving from stage 3
    to 4 replaces no stateful resource); each server runs `processes_per_server` copies of the
    app behind nginx, which the ALB targets. The difference lives in the server layout that
    `app_tier.render` turns into files."""
