"""Daily AWS Backup of what holds data outside a managed database service."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_backup as backup
from aws_cdk import aws_events as events
from constructs import Construct

from cdk_constructs.nag import acknowledge
from cdk_constructs.naming import stack_id_suffix


class DataBackup(Construct):
    """A vault, a daily plan kept for `retention_days`, and a selection of resources.

    RDS is not selected here: its automated backups (retention from the same config value)
    already give point-in-time restore.

    The vault is retained on destroy in every environment: a vault that still holds recovery
    points cannot be deleted, so `cdk destroy` would end in DELETE_FAILED. Its recovery points
    expire after `retention_days`; then delete it by hand (README: Names and what outlives a
    stack). Its name carries the stack-ID suffix, so a re-created stack does not collide with it.
    The plan's name carries the stack's, so environments sharing an account are told apart.
    """

    def __init__(self, scope: Construct, construct_id: str, *, resources: list[backup.BackupResource],
                 retention_days: int) -> None:
        super().__init__(scope, construct_id)
        stack_name = Stack.of(self).stack_name
        self.vault = backup.BackupVault(self, "Vault", backup_vault_name=f"{stack_name}-{stack_id_suffix(self)}",
                                        removal_policy=RemovalPolicy.RETAIN)
        self.plan = backup.BackupPlan(self, "Plan", backup_plan_name=f"{stack_name}-daily",
                                      backup_vault=self.vault, backup_plan_rules=[
            backup.BackupPlanRule(
                rule_name="Daily",
                # 03:00 in Seoul (UTC+9): the quietest hour for a Korean audience.
                schedule_expression=events.Schedule.cron(hour="18", minute="0"),
                delete_after=Duration.days(retention_days),
                start_window=Duration.hours(1), completion_window=Duration.hours(4)),
        ])
        self.selection = self.plan.add_selection("Data", resources=resources)
        acknowledge(self.selection.node.find_child("Role"), "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSBackupServiceRolePolicyForBackup]",
                    "AWS Backup's own service role policy: the documented set of permissions it needs to "
                    "snapshot EBS volumes and instances; a hand-written copy would drift from it.")
